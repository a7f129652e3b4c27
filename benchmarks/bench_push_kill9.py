"""Push clients against a daemon that is killed (-9) over and over, with and without
``Idempotency-Key``: how many rows land twice.

A client that gets no answer (the daemon was killed after spooling its request but
before answering) cannot tell whether the rows were kept, and sends them again. Without
a key the copy lands too; with one, both copies carry the same deduplication token and
ClickHouse keeps one. Each round: ``--clients`` clients post ``--requests`` requests of
``--rows`` ids each, retrying every answer but 202, while the daemon is SIGKILLed at
random moments (0.3 to 1 s after it accepts requests again) and restarted at once; then rows sent, rows in
ClickHouse and distinct ids are compared.

Run: ``.venv/bin/python benchmarks/bench_push_kill9.py [--rounds 1] [--seed 1] [--requests 300]``
"""

from __future__ import annotations

import argparse
import http.client
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import clickhouse_connect

from chworkers.embedded import EmbeddedClickHouse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_round(
    ch: EmbeddedClickHouse, *, keys: bool, seed: int, clients: int, requests: int, rows: int
) -> dict[str, int]:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="push-kill9-"))
    database = f"bench_{uuid.uuid4().hex[:8]}"
    admin = clickhouse_connect.get_client(host=ch.host, port=ch.port)
    admin.command(f"CREATE DATABASE {database}")
    port = free_port()
    conf = work / "chworkers.toml"
    conf.write_text(
        f"""
state_dir = "{work / "state"}"
[clickhouse]
url = "{ch.url}/{database}"
[metrics]
port = 0
[http]
port = {port}
[[pipelines]]
name = "push"
source = "http"
table = "ev"
create = "n UInt64"
engine = "MergeTree ORDER BY n"
max_delay = "50ms"
"""
    )
    log = open(work / "daemon.log", "ab")  # noqa: SIM115 (for every restart)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "chworkers", "run", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def client(c: int) -> None:
        for r in range(requests):
            first = (c * requests + r) * rows
            body = b"".join(b'{"n":%d}\n' % i for i in range(first, first + rows))
            headers = {"Idempotency-Key": f"{seed}-{c}-{r}"} if keys else {}
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    conn.request("POST", "/ingest/ev", body=body, headers=headers)
                    status = conn.getresponse().status
                    conn.close()
                except (OSError, http.client.HTTPException):
                    status = 0
                if status == 202:
                    break
                time.sleep(0.02)

    def ready() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)

    proc = start()
    ready()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    kills = 0
    while any(t.is_alive() for t in threads):
        time.sleep(rng.uniform(0.3, 1.0))  # from when the daemon accepts requests
        if any(t.is_alive() for t in threads):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start()
            ready()
    sent = clients * requests * rows
    query = f"SELECT count(), uniqExact(n) FROM {database}.ev"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if admin.query(query).result_rows[0][1] >= sent:
                break
        except Exception:  # the table may not exist yet
            pass
        time.sleep(0.5)
    time.sleep(2)  # anything landing twice shows now
    count, distinct = admin.query(query).result_rows[0]
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    admin.command(f"DROP DATABASE {database}")
    admin.close()
    shutil.rmtree(work, ignore_errors=True)
    return {"kills": kills, "sent": sent, "count": int(count), "distinct": int(distinct)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args()
    ch = EmbeddedClickHouse(Path(tempfile.mkdtemp(prefix="push-kill9-ch-")) / "data")
    ch.start()
    print("| Idempotency-Key | seed | kill -9 | rows sent | in ClickHouse | distinct |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    try:
        for r in range(args.rounds):
            for keys in (True, False):
                got = one_round(
                    ch,
                    keys=keys,
                    seed=args.seed + r,
                    clients=args.clients,
                    requests=args.requests,
                    rows=args.rows,
                )
                print(
                    f"| {'yes' if keys else 'no'} | {args.seed + r} | {got['kills']} | "
                    f"{got['sent']:,} | {got['count']:,} | {got['distinct']:,} |",
                    flush=True,
                )
    finally:
        ch.close()


if __name__ == "__main__":
    main()
