"""A daemon following many files with few descriptors: catch-up time, idle cost, and
exact counts across ``kill -9``.

``--files`` files (2,000 by default) each get a line; a daemon follows them all
(``follow = true``) with ``max_open_files`` well below that, under ``RLIMIT_NOFILE``
``--nofile`` (256: what the files alone would exceed). Measured: the seconds until every
file's first line is in ClickHouse, then the seconds for a round of one more line per
file (every file closed and reopened for it), then the daemon's CPU seconds per second
while all its files are idle (a ``stat`` of each per ``poll_interval``). Then
``--kills`` times: each file gets lines while the daemon is killed (-9) mid-round and
started again. At the end ClickHouse must hold every line exactly once.

Run: ``flock /work/coord/bench.lock .venv/bin/python benchmarks/bench_follow_files.py``
(``--help``; about a minute at the defaults).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import clickhouse_connect

from chworkers.embedded import EmbeddedClickHouse


def line(n: int) -> bytes:
    return b'{"n":%d}\n' % n


def wait(cond: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not cond():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--max-open-files", type=int, default=64)
    parser.add_argument("--nofile", type=int, default=256, help="the daemon's RLIMIT_NOFILE")
    parser.add_argument("--poll", default="250ms", help="poll_interval")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle cost")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="follow-files-"))
    data = work / "data"
    data.mkdir()
    files = [data / f"f{i:05d}.log" for i in range(args.files)]
    written = 0
    for f in files:
        f.write_bytes(line(written))
        written += 1
    with EmbeddedClickHouse(work / "clickhouse") as ch:
        database = f"bench_{uuid.uuid4().hex[:8]}"
        client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
        client.command(f"CREATE DATABASE {database}")
        conf = work / "chworkers.toml"
        conf.write_text(
            f"""
state_dir = "{work / "state"}"
[clickhouse]
url = "{ch.url}/{database}"
[supervisor]
workers = 1
[metrics]
port = 0
[http]
port = 0
[[pipelines]]
name = "p"
source = "file"
paths = ["{data}/*.log"]
follow = true
poll_interval = "{args.poll}"
max_open_files = {args.max_open_files}
close_idle_after = "2s"
table = "ev"
create = "n UInt64"
engine = "MergeTree ORDER BY n"
max_delay = "200ms"
"""
        )
        log = open(work / "daemon.log", "ab")  # noqa: SIM115 (for every restart)

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "chworkers", "run", "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=limit,
            )

        def count() -> int:
            if not client.command(f"EXISTS TABLE {database}.ev"):
                return 0
            return int(client.query(f"SELECT count() FROM {database}.ev").result_rows[0][0])

        def append_round() -> None:
            nonlocal written
            for f in files:
                with open(f, "ab") as fh:
                    fh.write(line(written))
                written += 1

        proc = start()
        try:
            first = wait(lambda: count() == written, 300, "the first lines")
            append_round()
            again = wait(lambda: count() == written, 300, "a line more per file")
            time.sleep(3)  # every file idle past close_idle_after: all closed
            cpu, started = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.idle)
            idle = (cpu_seconds(proc.pid) - cpu) / (time.monotonic() - started)
            for _ in range(args.kills):
                append_round()
                time.sleep(rng.uniform(0.1, 1.5))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc = start()
            wait(lambda: count() >= written, 300, "every line after the kills")
            time.sleep(2)  # anything read twice would land now
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
        rows, distinct = client.query(
            f"SELECT count(), uniqExact(n) FROM {database}.ev"
        ).result_rows[0]
        too_many = "Too many open files" in (work / "daemon.log").read_text()
    print(
        f"{args.files} files, max_open_files {args.max_open_files}, RLIMIT_NOFILE "
        f"{args.nofile} (load {os.getloadavg()[0]:.2f}): first lines in {first:.1f} s, a "
        f"line more per file in {again:.1f} s, idle {idle:.3f} CPU s/s at poll "
        f"{args.poll}; after {args.kills} kill -9: {rows} rows, {distinct} distinct, "
        f"{written} written{'; Too many open files!' if too_many else ''}"
    )
    if (rows, distinct) != (written, written) or too_many:
        raise SystemExit(f"not exact: see {work / 'daemon.log'}")


if __name__ == "__main__":
    main()
