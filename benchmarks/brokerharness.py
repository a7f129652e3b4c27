"""The harness of benchmarks/bench_brokers.py: the rows, a daemon as a subprocess with its
configuration, ClickHouse counts, the CPU seconds of process trees and threads from /proc,
and a run's rate from the first row in ClickHouse to the last."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import clickhouse_connect

from chworkers.embedded import EmbeddedClickHouse

SCHEMA = "id UInt64, s String"
STREAM = "bench"
SUBJECT = f"{STREAM}.data"  # NATS: the stream takes bench.>


def rows(start: int, stop: int) -> bytes:
    return b"".join(b'{"id":%d,"s":"row %d"}\n' % (i, i) for i in range(start, stop))


def toml(
    state: Path, url: str, pipeline: dict[str, Any], section: tuple[str, dict[str, Any]] | None
) -> str:
    """A daemon's configuration; ``section``: the broker's ``[pipelines.<name>]``."""

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
    if section is not None:
        name, options = section
        lines += [f"[pipelines.{name}]", *(f"{k} = {value(v)}" for k, v in options.items())]
    return "\n".join(lines) + "\n"


class Daemon:
    def __init__(self, workdir: Path, config: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config = workdir / "chworkers.toml"
        self.config.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def label(self) -> str:
        """Its consumer name (Redis) or its name in the manifests it writes (NATS)."""
        from chworkers.daemon.brokers.redisclient import default_consumer

        return default_consumer(str((self.workdir / "state").resolve()))

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


def _proc_cpu() -> dict[int, tuple[int, float, int]]:
    """pid -> (parent pid, CPU seconds so far, start time) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used = (int(fields[11]) + int(fields[12])) / tick
            out[int(entry)] = (int(fields[1]), used, int(fields[19]))
    return out


#: Per tree (its roots): (pid, start time) -> the CPU seconds it had when last seen.
_SEEN: dict[tuple[int, ...], dict[tuple[int, int], float]] = {}


def tree_cpu(*roots: int) -> float:
    """CPU seconds used so far by the processes ``roots`` and everything below them, with
    those that ended since an earlier call for the same roots (as they were then: call it
    often, as :func:`wait_rows` does). Else a worker that ends during a run takes its CPU
    out of the sum (a parent's count of its children's CPU misses those reaped by another,
    or not at all), and a path's CPU can come out negative."""
    table = _proc_cpu()
    seen = _SEEN.setdefault(roots, {})
    todo, walked = list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in walked or pid not in table:
            continue
        walked.add(pid)
        seen[pid, table[pid][2]] = table[pid][1]
        todo += [child for child, (parent, _, _) in table.items() if parent == pid]
    return sum(seen.values())


def threads_cpu(*roots: int) -> dict[str, float]:
    """CPU seconds so far of each thread of ``roots`` and their children, summed by
    ``pid/thread name``."""
    table = _proc_cpu()
    pids, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in pids:
            pids.add(pid)
            todo += [child for child, (parent, _, _) in table.items() if parent == pid]
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            name, rest = stat.split("(", 1)[1].rsplit(")", 1)
            fields = rest.split()
            key = f"{pid}/{name}"
            out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def thread_cpu(tid: int) -> float:
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Measured:
    """Rows/s from the first row in ClickHouse to the last (start-up, a second or more
    for a daemon, left out for every path alike), and the CPU seconds the path's
    processes used meanwhile: the reader's (the daemon and its workers, or the plain
    loop's thread) with the broker's, and ClickHouse's apart (its background merges come
    and go with timing). On a shared machine the wall-clock rate moves with everybody
    else's load; the CPU a row costs much less."""

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
    ch: EmbeddedClickHouse,
    database: str,
    total: int,
    cpu: Any = None,
    timeout: float = 1800,
    on_first: Any = None,
) -> Measured:
    deadline = time.monotonic() + timeout
    first: float | None = None
    first_rows, first_cpu = 0, (0.0, 0.0)
    while (n := counts(ch, database, "ev")[0]) < total:
        if first is None and n > 0:
            first, first_rows = time.monotonic(), n
            first_cpu = cpu() if cpu is not None else (0.0, 0.0)
            if on_first is not None:
                on_first()
        elif first is not None and cpu is not None:
            cpu()  # the processes seen meanwhile, with their CPU (tree_cpu)
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {counts(ch, database, 'ev')} of {total}")
        time.sleep(0.05)
    done = time.monotonic()
    last_cpu = cpu() if cpu is not None else (0.0, 0.0)
    used = (last_cpu[0] - first_cpu[0], last_cpu[1] - first_cpu[1])
    if first is None:  # all of it in one go
        return Measured(float("nan"), (float("nan"), float("nan")), total)
    return Measured((total - first_rows) / (done - first), used, total - first_rows)


PIPELINE: dict[str, Any] = {
    "table": "ev",
    "format": "JSONEachRow",
    "max_rows": 50_000,
    "max_delay": "500ms",
}


def plain_count(per: int) -> int:
    """Messages per read of a plain loop: one insert of ``max_rows``, as the daemons'."""
    return max(1, PIPELINE["max_rows"] // per)


# -- a source in this process, without ClickHouse ---------------------------------------------


class Completing:
    """A batcher that completes every batch as soon as it is given one."""

    def __init__(self) -> None:
        self.source: Any = None
        self.rows = 0
        self.batches = 0
        self.first = 0.0

    def add(self, table: str, payload: bytes, rows: int, **kw: Any) -> None:
        if not self.batches:
            self.first = time.monotonic()
        self.rows += rows
        self.batches += 1
        self.source.complete(Batch(kw["meta"]))

    def until_rows(self, total: int, since: float, timeout: float = 600) -> float:
        """Wait until it was given ``total`` rows (a SystemExit ``timeout`` seconds after
        ``since``, a ``time.monotonic()``); returns when."""
        while self.rows < total:
            if time.monotonic() - since > timeout:
                raise SystemExit(f"timed out: {self.rows:,} of {total:,} rows")
            time.sleep(0.02)
        return time.monotonic()


def per_message(
    args: argparse.Namespace, used: tuple[float, float], seconds: float, many: str
) -> dict[str, float]:
    """A source benchmark's result (:func:`source_bench`): the CPU ``used`` by this
    process and by the broker's per message, in microseconds, and messages (``many``)
    per second over ``seconds``, with the load average."""
    return {
        "source_us": used[0] / args.messages * 1e6,
        "server_us": used[1] / args.messages * 1e6,
        f"{many}_per_s": args.messages / seconds,
        "load": os.getloadavg()[0],
    }


class Batch:
    path = None

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta


def process_cpu() -> float:
    times = os.times()
    return times.user + times.system


def source_bench(
    doc: str | None,
    measure: Callable[[argparse.Namespace, Path], dict[str, float]],
    *,
    unit: tuple[str, str],
    server: str,
    profile: tuple[str, str],
    options: tuple[tuple[str, dict[str, Any]], ...] = (),
) -> None:
    """The command line of a broker source's own CPU benchmark (bench_redis_source.py,
    bench_nats_source.py): its options, ``measure(args, a temporary directory)``, and what
    it prints (one line, or the result as JSON with ``--json``). ``unit``: what the broker
    holds, one and many (``entry``, ``entries``: the result's rate is ``entries_per_s``);
    ``server``: the broker's process; ``profile``: the profiling option and its help;
    ``options``: more options of this broker's (argparse's flag and keywords)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rows-per-message", type=int, default=10)
    parser.add_argument("--max-rows", type=int, default=50_000)
    parser.add_argument("--fetch-count", type=int, default=10_000)
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument(profile[0], default="", metavar="FILE", help=profile[1])
    for flag, keywords in options:
        parser.add_argument(flag, **keywords)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        result = measure(args, Path(tmp))
    if args.json:
        print(json.dumps(result))
        return
    one, many = unit
    print(
        f"{args.messages:,} {many} of {args.rows_per_message} rows (load "
        f"{result['load']:.1f}): the source {result['source_us']:.2f} us of CPU per "
        f"{one}, {server} {result['server_us']:.2f}, "
        f"{result[f'{many}_per_s']:,.0f} {many}/s"
    )
