"""Benchmark the supervisor: batch transport, insert throughput, dispatch rate, RSS.

Run: ``.venv/bin/python benchmarks/bench_supervisor.py`` (starts its own embedded
ClickHouse). Sections (``--only NAME`` to run one):

transport  How a batch of rows can cross the process boundary: pickle protocol 5, dill,
           Arrow IPC and ClickHouse Native encoded by the producer. Encode and decode
           time, size, and what the worker still has to do before sending.
insert     ``chworkers bench --only rows`` (docs/bench.md) with this script's sizes and
           1, 2 and 4 workers: a plain clickhouse-connect loop, a fork-inherited
           Pool(2) and chworkers, interleaved, with medians and ratios.
dispatch   Empty tasks through 2 workers (target: >= 20,000 tasks/s).
rss        The supervisor's RSS over a saturated insert run (target: flat within 10%;
           the issue asks for 5 minutes, ``--rss-seconds`` sets it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import clickhouse_connect
import dill  # type: ignore[import-untyped]
import pyarrow as pa
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.insert import InsertContext
from clickhouse_connect.driver.transform import NativeTransform

from chworkers import EmbeddedClickHouse, Supervisor

COLUMNS = ["id", "ts", "user", "value"]
TYPES = ["UInt64", "DateTime", "String", "Float64"]
DDL = "CREATE TABLE {t} (id UInt64, ts DateTime, user String, value Float64) ENGINE = MergeTree ORDER BY id"


def rows_for(batch: int, size: int) -> list[tuple[int, dt.datetime, str, float]]:
    base = dt.datetime(2024, 1, 1)
    return [
        (batch * size + i, base + dt.timedelta(seconds=i), f"user{i % 97}", i * 0.25)
        for i in range(size)
    ]


def timed(fn: Callable[[], Any], repeat: int = 5) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def native(rows: list[Any]) -> bytes:
    ctx = InsertContext("t", COLUMNS, [get_from_name(t) for t in TYPES], rows)
    data = b"".join(NativeTransform.build_insert(ctx))
    return data[data.index(b"FORMAT Native\n") + 14 :]  # clickhouse-connect prepends the query


def arrow_ipc(rows: list[Any]) -> bytes:
    cols = list(zip(*rows, strict=True))
    table = pa.table(
        {
            "id": pa.array(cols[0], pa.uint64()),
            "ts": pa.array(cols[1], pa.timestamp("s")),
            "user": pa.array(cols[2], pa.string()),
            "value": pa.array(cols[3], pa.float64()),
        }
    )
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def bench_transport(size: int) -> None:
    rows = rows_for(0, size)
    print(f"\n== transport: one batch of {size} rows ({', '.join(TYPES)})")
    print(f"{'encoding':<28}{'encode ms':>10}{'decode ms':>10}{'MB':>8}   worker still has to")
    cases: list[tuple[str, Callable[[], bytes], Callable[[bytes], Any], str]] = [
        (
            "pickle 5 (chosen for rows)",
            lambda: pickle.dumps(rows, 5),
            pickle.loads,
            "serialize to Native (clickhouse-connect)",
        ),
        ("dill", lambda: dill.dumps(rows), dill.loads, "serialize to Native"),
        (
            "Arrow IPC",
            lambda: arrow_ipc(rows),
            lambda b: pa.ipc.open_stream(b).read_all(),
            "nothing (insert_arrow)",
        ),
        (
            "Native by the producer",
            lambda: native(rows),
            lambda b: b,
            "nothing (raw insert); needs column types",
        ),
    ]
    for name, enc, dec, left in cases:
        t_enc, data = timed(enc)
        t_dec, _ = timed(lambda: dec(data))  # noqa: B023
        print(f"{name:<28}{t_enc * 1e3:>10.2f}{t_dec * 1e3:>10.2f}{len(data) / 1e6:>8.2f}   {left}")
    t_native, _ = timed(lambda: native(rows))
    print(
        f"(clickhouse-connect's own row serialization, paid by a plain loop too: {t_native * 1e3:.2f} ms)"
    )


def fresh_table(client: Any, name: str) -> str:
    client.command(f"DROP TABLE IF EXISTS {name}")
    client.command(DDL.format(t=name))
    return name


def bench_insert(batches: int, size: int) -> None:
    """The insert comparison is ``chworkers bench --only rows`` (interleaved rounds,
    medians, ratios; docs/bench.md), run here with this script's sizes."""
    print(f"\n== insert: chworkers bench --only rows, {batches} batches x {size} rows")
    sizes = ["--rows", str(batches * size), "--batch", str(size), "--workers", "1,2,4"]
    subprocess.run(
        [sys.executable, "-m", "chworkers", "bench", "--only", "rows", *sizes],
        check=True,
    )


def noop() -> None:
    return None


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_dispatch(n: int, method: str) -> None:
    print(f"\n== dispatch: {n} empty tasks, 2 workers, start method {method}")
    with Supervisor(workers=2, start_method=method, queue_size=10_000) as sup:
        for f in [sup.call(noop) for _ in range(2000)]:  # warm up
            f.result()
        pids = [w["pid"] for w in sup.stats().workers]
        rates, sup_cpu, worker_cpu = [], [], []
        for _ in range(3):
            c0, w0 = cpu_seconds(os.getpid()), sum(cpu_seconds(p) for p in pids)
            t0 = time.perf_counter()
            futures = [sup.call(noop) for _ in range(n)]
            for f in futures:
                f.result(120)
            rates.append(n / (time.perf_counter() - t0))
            sup_cpu.append((cpu_seconds(os.getpid()) - c0) / n)
            worker_cpu.append((sum(cpu_seconds(p) for p in pids) - w0) / n)
    print(
        f"   {statistics.median(rates):,.0f} tasks/s wall (median of 3; runs: "
        f"{', '.join(f'{r:,.0f}' for r in rates)}; load average {os.getloadavg()[0]:.1f})"
    )
    s, w = statistics.median(sup_cpu), statistics.median(worker_cpu)
    print(
        f"   CPU per task: supervisor {s * 1e6:.1f} us (producer thread included), workers "
        f"{w * 1e6:.1f} us; on 2 idle cores that bounds the rate at ~{min(1 / s, 2 / (s + w)):,.0f}/s"
    )


def rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bench_rss(ch: EmbeddedClickHouse, seconds: float, method: str) -> None:
    print(f"\n== rss: supervisor RSS over {seconds:.0f} s of saturated inserts (4 workers)")
    client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
    table = fresh_table(client, "rss")
    stop = threading.Event()
    samples: list[tuple[float, int]] = []
    done = [0]
    with Supervisor(
        ch.url, workers=4, max_connections=2, start_method=method, queue_size=200
    ) as sup:

        def produce() -> None:
            b = 0
            while not stop.is_set():
                sup.insert(table, rows_for(b, 1000), COLUMNS).add_done_callback(
                    lambda f: done.__setitem__(0, done[0] + 1)
                )
                b += 1

        thread = threading.Thread(target=produce)
        thread.start()
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            time.sleep(1.0)
            samples.append((time.monotonic() - start, rss_kb()))
        stop.set()
        thread.join()
    warm = [kb for t, kb in samples if t >= seconds * 0.1]
    first, last, peak = warm[0], warm[-1], max(warm)
    print(
        f"   {done[0]} batches inserted; RSS after warm-up {first / 1024:.1f} MiB, "
        f"at the end {last / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB "
        f"({(last - first) / first * 100:+.1f}% end vs start, {(peak - first) / first * 100:+.1f}% peak)"
    )
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["transport", "insert", "dispatch", "rss"])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rss-seconds", type=float, default=60.0)
    parser.add_argument("--start-method", default="forkserver")
    args = parser.parse_args()
    only = args.only
    if only in (None, "transport"):
        bench_transport(args.batch_size)
    if only in (None, "dispatch"):
        bench_dispatch(args.tasks, args.start_method)
    if only in (None, "insert"):
        bench_insert(args.batches, args.batch_size)
    if only in (None, "rss"):
        with tempfile.TemporaryDirectory() as tmp, EmbeddedClickHouse(f"{tmp}/data") as ch:
            bench_rss(ch, args.rss_seconds, args.start_method)


if __name__ == "__main__":
    main()
