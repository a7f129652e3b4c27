"""The Redis source measured (issue 13): throughput against the file source and a plain
consumer loop, and exact counts with several daemons, ``kill -9`` and a Redis restart.
``--broker nats`` measures the NATS source the same way (benchmarks/natsbench.py).

Everything runs on this machine: a redis-server of its own (tests/redisserver.py, with
``appendfsync always``), one embedded ClickHouse, and ``chworkers run`` daemons as
subprocesses. Each message holds ``--rows-per-message`` JSONEachRow rows with a unique id.

* ``throughput``: the same rows (a) from a file through the file source, (b) from the
  stream through the Redis source, (c) through a plain loop (redis-py XREADGROUP ->
  clickhouse-connect raw insert -> XACK); rows/s from the first row in ClickHouse to the
  last (start-up left out), medians of interleaved ``--rounds``.
* ``scale``: ``--daemons`` daemons on one stream, ``--kill-every`` seconds one of them
  killed -9 and restarted at once (same state directory, so the same consumer name),
  ``--redis-restart`` kills redis-server once mid-ingest, ``--clickhouse-outage S``
  stops ClickHouse for S seconds past half-way; rows sent, rows in ClickHouse,
  distinct ids, and how long each killed daemon's pending entries took to be acknowledged.

Run: ``.venv/bin/python benchmarks/bench_brokers.py throughput --messages 1000000``
     ``.venv/bin/python benchmarks/bench_brokers.py scale --messages 1000000 --daemons 3 --kill-every 5``
     ``.venv/bin/python benchmarks/bench_brokers.py scale --broker nats --messages 1000000 --kill-every 5``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import clickhouse_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from redisserver import RedisServer

from chworkers.embedded import EmbeddedClickHouse

SCHEMA = "id UInt64, s String"
STREAM = "bench"


def rows(start: int, stop: int) -> bytes:
    return b"".join(b'{"id":%d,"s":"row %d"}\n' % (i, i) for i in range(start, stop))


def produce(server: RedisServer, stream: str, messages: int, per: int, start: int = 0) -> None:
    client = server.client()
    pipe = client.pipeline(transaction=False)
    for m in range(start, start + messages):
        pipe.xadd(stream, {"data": rows(m * per, (m + 1) * per)})
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()
    client.close()


def toml(state: Path, url: str, pipeline: dict[str, Any], redis: dict[str, Any] | None) -> str:
    def value(v: Any) -> str:
        return (
            json.dumps(v)
            if isinstance(v, str | list)
            else repr(v).lower()
            if isinstance(v, bool)
            else repr(v)
        )

    lines = [
        f"state_dir = {json.dumps(str(state))}",
        "[clickhouse]",
        f"url = {json.dumps(url)}",
        "[supervisor]",
        "workers = 1",
        "[metrics]",
        "port = 0",
        "[http]",
        "port = 0",
        "[spool]",
        "retry_backoff_max = 1.0",
        "[[pipelines]]",
        *(f"{k} = {value(v)}" for k, v in pipeline.items()),
    ]
    if redis is not None:
        lines += ["[pipelines.redis]", *(f"{k} = {value(v)}" for k, v in redis.items())]
    return "\n".join(lines) + "\n"


class Daemon:
    def __init__(self, workdir: Path, config: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config = workdir / "chworkers.toml"
        self.config.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.workdir / f"daemon-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chworkers", "run", "-c", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        time.sleep(0.3)  # its workers see their parent gone and exit

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


def counts(ch: EmbeddedClickHouse, database: str, table: str) -> tuple[int, int]:
    client = clickhouse_connect.get_client(host=ch.host, port=ch.port, database=database)
    try:
        if not client.command(f"EXISTS TABLE {table}"):
            return 0, 0
        row = client.query(f"SELECT count(), uniqExact(id) FROM {table}").result_rows[0]
        return int(row[0]), int(row[1])
    finally:
        client.close()


def fresh_database(ch: EmbeddedClickHouse, name: str) -> str:
    client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
    client.command(f"DROP DATABASE IF EXISTS {name} SYNC")
    client.command(f"CREATE DATABASE {name}")
    client.command(
        f"CREATE TABLE {name}.ev ({SCHEMA}) ENGINE = MergeTree ORDER BY id "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    client.close()
    return name


def _proc_cpu() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


def tree_cpu(*roots: int) -> float:
    """CPU seconds used so far by the processes ``roots`` and everything below them."""
    table = _proc_cpu()
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table.get(pid, (0, 0.0))[1]
        todo += [child for child, (parent, _) in table.items() if parent == pid]
    return total


def thread_cpu(tid: int) -> float:
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Measured:
    """Rows/s from the first row in ClickHouse to the last (start-up, a second or more
    for a daemon, left out for every path alike), and the CPU seconds the path's
    processes used meanwhile: the reader's (the daemon and its workers, or the plain
    loop's thread) with Redis's, and ClickHouse's apart (its background merges come and
    go with timing). On a shared machine the wall-clock rate moves with everybody else's
    load; the CPU a row costs much less."""

    def __init__(self, rate: float, cpu: tuple[float, float], rows: int) -> None:
        self.rate, self.rows = rate, rows
        self.reader_cpu, self.clickhouse_cpu = cpu

    @property
    def reader_per_million(self) -> float:
        return self.reader_cpu / self.rows * 1e6

    @property
    def cpu_per_million(self) -> float:
        return (self.reader_cpu + self.clickhouse_cpu) / self.rows * 1e6


def wait_rows(
    ch: EmbeddedClickHouse, database: str, total: int, cpu: Any = None, timeout: float = 1800
) -> Measured:
    deadline = time.monotonic() + timeout
    first: float | None = None
    first_rows, first_cpu = 0, (0.0, 0.0)
    while (n := counts(ch, database, "ev")[0]) < total:
        if first is None and n > 0:
            first, first_rows = time.monotonic(), n
            first_cpu = cpu() if cpu is not None else (0.0, 0.0)
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {counts(ch, database, 'ev')} of {total}")
        time.sleep(0.05)
    done = time.monotonic()
    last_cpu = cpu() if cpu is not None else (0.0, 0.0)
    used = (last_cpu[0] - first_cpu[0], last_cpu[1] - first_cpu[1])
    if first is None:  # all of it in one go
        return Measured(float("nan"), (float("nan"), float("nan")), total)
    return Measured((total - first_rows) / (done - first), used, total - first_rows)


PIPELINE = {"table": "ev", "format": "JSONEachRow", "max_rows": 50_000, "max_delay": "500ms"}


def run_file(ch: EmbeddedClickHouse, tmp: Path, total: int, data: Path, r: int) -> Measured:
    db = fresh_database(ch, f"bench_file_{r}")
    pipeline = {"name": "file", "source": "file", "paths": [str(data)], **PIPELINE}
    d = Daemon(
        tmp / f"file-{r}", toml(tmp / f"file-{r}" / "state", f"{ch.url}/{db}", pipeline, None)
    )
    d.start()
    assert d.proc is not None and ch.pid is not None
    daemon, clickhouse = d.proc.pid, ch.pid
    measured = wait_rows(ch, db, total, lambda: (tree_cpu(daemon), tree_cpu(clickhouse)))
    d.stop()
    return measured


def run_redis(
    ch: EmbeddedClickHouse, tmp: Path, server: RedisServer, total: int, r: int
) -> Measured:
    db = fresh_database(ch, f"bench_redis_{r}")
    pipeline = {"name": "redis", "source": "redis", **PIPELINE}
    redis = {"url": server.url, "stream": STREAM, "group": f"g{r}", "fetch_count": 10_000}
    d = Daemon(
        tmp / f"redis-{r}", toml(tmp / f"redis-{r}" / "state", f"{ch.url}/{db}", pipeline, redis)
    )
    d.start()
    assert d.proc is not None and server.proc is not None and ch.pid is not None
    daemon, redis_pid, clickhouse = d.proc.pid, server.proc.pid, ch.pid
    measured = wait_rows(ch, db, total, lambda: (tree_cpu(daemon, redis_pid), tree_cpu(clickhouse)))
    d.stop()
    return measured


def run_plain(ch: EmbeddedClickHouse, server: RedisServer, total: int, r: int) -> Measured:
    """What a user writes by hand: read, insert, acknowledge after the insert."""
    db = fresh_database(ch, f"bench_plain_{r}")
    assert server.proc is not None and ch.pid is not None
    redis_pid, clickhouse = server.proc.pid, ch.pid
    result: list[Measured] = []
    ready = threading.Event()
    loop_thread: list[int] = []
    loop_cpu: list[float] = []  # the loop's CPU seconds, once it ended

    def cpu() -> tuple[float, float]:
        try:
            own = thread_cpu(loop_thread[0])
        except FileNotFoundError:  # the loop ended
            own = loop_cpu[0]
        return tree_cpu(redis_pid) + own, tree_cpu(clickhouse)

    def loop() -> None:
        loop_thread.append(threading.get_native_id())
        redis = server.client()
        group = f"plain{r}"
        redis.xgroup_create(STREAM, group, "0")
        client = clickhouse_connect.get_client(host=ch.host, port=ch.port, database=db)
        ready.set()
        inserted = 0
        while inserted < total:
            reply = redis.xreadgroup(group, "plain", {STREAM: ">"}, count=10_000, block=1000)
            if not reply:
                continue
            entries = reply[0][1]
            payload = b"".join(fields[b"data"] for _id, fields in entries)
            client.raw_insert("ev", insert_block=payload, fmt="JSONEachRow")
            redis.xack(STREAM, group, *[entry_id for entry_id, _f in entries])
            inserted += payload.count(b"\n")
        client.close()
        redis.close()
        loop_cpu.append(time.thread_time())

    worker = threading.Thread(target=loop)
    worker.start()
    ready.wait()
    result.append(wait_rows(ch, db, total, cpu))
    worker.join()
    return result[0]


def throughput(args: argparse.Namespace, ch: EmbeddedClickHouse, tmp: Path) -> None:
    total = args.messages * args.rows_per_message
    server = RedisServer(tmp / "redis")
    server.start()
    try:
        t0 = time.monotonic()
        produce(server, STREAM, args.messages, args.rows_per_message)
        print(
            f"produced {args.messages:,} messages ({total:,} rows) in {time.monotonic() - t0:.1f} s"
        )
        data = tmp / "rows.json"
        with open(data, "wb") as fh:
            for m in range(0, args.messages, 10_000):
                fh.write(
                    rows(
                        m * args.rows_per_message,
                        min(args.messages, m + 10_000) * args.rows_per_message,
                    )
                )
        results: dict[str, list[Measured]] = {
            "file source": [],
            "redis source": [],
            "plain loop": [],
        }
        for r in range(args.rounds):
            results["file source"].append(run_file(ch, tmp, total, data, r))
            results["redis source"].append(run_redis(ch, tmp, server, total, r))
            results["plain loop"].append(run_plain(ch, server, total, r))
            print(
                f"round {r + 1} (load {os.getloadavg()[0]:.1f}): "
                + ", ".join(
                    f"{k} {v[-1].rate:,.0f} rows/s, {v[-1].reader_per_million:.2f} + "
                    f"{v[-1].cpu_per_million - v[-1].reader_per_million:.2f} cpu-s/M"
                    for k, v in results.items()
                )
            )
        rate = {k: statistics.median(m.rate for m in v) for k, v in results.items()}
        reader = {k: statistics.median(m.reader_per_million for m in v) for k, v in results.items()}
        cost = {k: statistics.median(m.cpu_per_million for m in v) for k, v in results.items()}
        print(
            f"\n{total:,} rows, {args.rows_per_message} per message, medians of {args.rounds} "
            "rounds. reader: CPU seconds per million rows of the reader (the daemon and its "
            "workers, or the plain loop) and Redis; all: with ClickHouse's; 2 cores: the rate "
            "all of them could reach with both cores to themselves (2 / all)"
        )
        print(
            f"{'path':<14} {'rows/s':>10} {'vs file':>8} {'reader':>7} {'all':>6} "
            f"{'2 cores':>10} {'vs file':>8}"
        )
        for name in results:
            capacity = 2e6 / cost[name]
            print(
                f"{name:<14} {rate[name]:>10,.0f} {rate[name] / rate['file source']:>8.2f} "
                f"{reader[name]:>7.2f} {cost[name]:>6.2f} {capacity:>10,.0f} "
                f"{cost['file source'] / cost[name]:>8.2f}"
            )
    finally:
        server.stop()


def _key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _still_pending(redis: Any, ids: set[bytes]) -> set[bytes]:
    lo, hi = min(ids, key=_key), max(ids, key=_key)
    entries = redis.xpending_range(STREAM, "chworkers", lo, hi, count=len(ids) * 4 + 10_000)
    return ids & {e["message_id"] for e in entries}


def scale(args: argparse.Namespace, ch: EmbeddedClickHouse, tmp: Path) -> None:
    from chworkers.daemon.brokers.redisclient import default_consumer

    total = args.messages * args.rows_per_message
    server = RedisServer(tmp / "redis")
    server.start()
    rng = random.Random(args.seed)
    db = fresh_database(ch, "bench_scale")
    pipeline = {"name": "redis", "source": "redis", **PIPELINE, "max_rows": 20_000}
    redis_opts = {
        "url": server.url,
        "stream": STREAM,
        "fetch_count": 5000,
        "claim_idle": args.claim_idle,
        "claim_interval": 1.0,
    }
    daemons = [
        Daemon(tmp / f"d{i}", toml(tmp / f"d{i}" / "state", f"{ch.url}/{db}", pipeline, redis_opts))
        for i in range(args.daemons)
    ]
    redis = server.client()
    watches: list[tuple[float, set[bytes]]] = []  # a kill's time, its consumer's pending ids
    redelivery: list[float] = []
    kills = 0
    producer = None
    try:
        for d in daemons:
            d.start()
        started = time.monotonic()
        producer = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "produce",
                "--url",
                server.url,
                "--messages",
                str(args.messages),
                "--rows-per-message",
                str(args.rows_per_message),
            ]
        )
        next_kill = started + args.kill_every if args.kill_every else float("inf")
        redis_restarted = not args.redis_restart
        outage_done = not args.clickhouse_outage
        while True:
            now = time.monotonic()
            inserted = counts(ch, db, "ev")[0]
            if inserted >= total and producer.poll() is not None:
                break
            if now - started > 3600:
                raise SystemExit(f"timed out with {inserted:,} of {total:,} rows")
            try:
                if not redis_restarted and inserted > total // 3:
                    print("killing redis-server (-9) and starting it again")
                    server.kill()
                    time.sleep(1)
                    server.start()
                    redis = server.client()
                    redis_restarted = True
                if not outage_done and inserted > total // 2:
                    print(f"ClickHouse down for {args.clickhouse_outage:g} s")
                    ch.kill()
                    time.sleep(args.clickhouse_outage)
                    ch.start()
                    outage_done = True
                    continue
                if now >= next_kill and inserted < total * 0.9:
                    victim = daemons[rng.randrange(len(daemons))]
                    consumer = default_consumer(str((victim.workdir / "state").resolve()))
                    entries = redis.xpending_range(
                        STREAM, "chworkers", "-", "+", count=1_000_000, consumername=consumer
                    )
                    victim.kill9()
                    kills += 1
                    victim.start()
                    if entries:
                        watches.append((now, {e["message_id"] for e in entries}))
                    next_kill = now + args.kill_every
                for watch in list(watches):
                    if not _still_pending(redis, watch[1]):
                        redelivery.append(time.monotonic() - watch[0])
                        watches.remove(watch)
            except Exception as exc:  # redis restarting under us
                print(f"(monitor: {type(exc).__name__}: {exc})")
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        while True:
            group = redis.xinfo_groups(STREAM)[0]
            if group["pending"] == 0 and group["lag"] == 0:
                break
            time.sleep(0.2)
        n, distinct = counts(ch, db, "ev")
        print(
            f"\n{args.daemons} daemons, {args.messages:,} messages ({total:,} rows), "
            f"{kills} kill -9 (every {args.kill_every:g} s), "
            f"redis-server killed and restarted: {'yes' if args.redis_restart else 'no'}, "
            f"ClickHouse down for {args.clickhouse_outage:g} s"
        )
        verdict = "EXACT" if n == distinct == total else "MISMATCH"
        print(f"rows sent {total:,}, in ClickHouse {n:,}, distinct ids {distinct:,}: {verdict}")
        print(f"{total / elapsed:,.0f} rows/s over {elapsed:.1f} s (kills and restarts included)")
        if redelivery:
            print(
                f"a killed daemon's pending entries all acknowledged after: median "
                f"{statistics.median(redelivery):.1f} s, max {max(redelivery):.1f} s "
                f"({len(redelivery)} kills that held entries)"
            )
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        for d in daemons:
            d.stop()
        server.stop()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up the servers too
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["throughput", "scale", "produce"])
    parser.add_argument("--broker", choices=["redis", "nats"], default="redis")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rows-per-message", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=0.0)
    parser.add_argument("--claim-idle", type=float, default=5.0)
    parser.add_argument("--redis-restart", action="store_true")
    parser.add_argument(
        "--broker-restart", action="store_true", help="--broker nats: kill -9 nats-server once"
    )
    parser.add_argument("--ack-wait", type=float, default=5.0, help="--broker nats: ack_wait")
    parser.add_argument("--clickhouse-outage", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--url", default="")
    args = parser.parse_args()
    if args.broker == "nats":
        import natsbench

        if args.mode == "produce":
            asyncio.run(natsbench.publish(args.url, args.messages, args.rows_per_message))
            return
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmpdir:
            tmp = Path(tmpdir)
            with EmbeddedClickHouse(tmp / "ch") as ch:
                (natsbench.throughput if args.mode == "throughput" else natsbench.scale)(
                    args, ch, tmp
                )
        return
    if args.mode == "produce":  # the scale run's producer, in a process of its own
        import redis as redis_py

        client = redis_py.Redis.from_url(args.url)
        done = 0
        while done < args.messages:
            chunk = range(done, min(args.messages, done + 2000))
            pipe = client.pipeline(transaction=False)
            for m in chunk:  # explicit ids: an XADD sent again is refused, never doubled
                data = rows(m * args.rows_per_message, (m + 1) * args.rows_per_message)
                pipe.xadd(STREAM, {"data": data}, id=f"{m + 1}-1")
            try:
                for reply in pipe.execute(raise_on_error=False):
                    if isinstance(reply, Exception) and "equal or smaller" not in str(reply):
                        raise reply
                done = chunk.stop
            except redis_py.ConnectionError:
                time.sleep(0.5)  # redis-server restarting
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmpdir:
        tmp = Path(tmpdir)
        with EmbeddedClickHouse(tmp / "ch") as ch:
            (throughput if args.mode == "throughput" else scale)(args, ch, tmp)


if __name__ == "__main__":
    main()
