"""Benchmark leases and ``Supervisor.submit`` against a plain ``multiprocess.Pool(2)``.

Run: ``.venv/bin/python benchmarks/bench_lease.py`` (starts its own embedded ClickHouse).
Sections (``--only NAME`` to run one), each run for ``--rounds`` interleaved rounds and
reported as medians with min..max:

lease   Cross-process lease acquire + release, timed in a worker process (fork and spawn)
        against a broker in this one (target: p50 <= 50 us, p99 <= 200 us).
submit  ``sup.submit(trivial)`` (the task takes a leased connection and does nothing with
        it) against ``Pool(2).apply_async(trivial)``, both with 2 worker processes, and
        how the tasks were spread over the two workers (target: >= 1.0x).
rows    Rows produced in the workers: ``sup.submit(fn, part)`` where ``fn`` builds its
        rows and inserts them on the leased connection, against a ``Pool(2)`` whose
        workers build the same rows and insert them with their own clickhouse-connect
        client (target: >= 1.0x).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import clickhouse_connect
import multiprocess

from chworkers import EmbeddedClickHouse, LeaseBroker, LeaseClient, Supervisor

COLUMNS = ["id", "user", "ts", "value"]
DDL = (
    "CREATE TABLE {t} (id UInt64, user String, ts DateTime, value Float64) "
    "ENGINE = MergeTree ORDER BY id"
)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):>10,.1f}  ({min(values):,.1f}..{max(values):,.1f})"


# -- lease --------------------------------------------------------------------------------


def _lease_child(client: LeaseClient, n: int, out: Any) -> None:
    for _ in range(min(n, 500)):  # warm up: connect, first grants
        client.acquire(5)
        client.release()
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        client.acquire(5)
        client.release()
        samples.append(clock() - t0)
    client.close()
    out.put((pct(samples, 0.5), pct(samples, 0.99)))


def lease_round(n: int, method: str) -> tuple[float, float]:
    ctx = multiprocess.get_context(method)
    with LeaseBroker(4, context=ctx) as broker:
        out = ctx.Queue()
        p = ctx.Process(target=_lease_child, args=(broker.client("bench"), n, out))
        p.start()
        result: tuple[float, float] = out.get(timeout=300)
        p.join()
    return result


# -- submit -------------------------------------------------------------------------------


def trivial_conn(conn: Any) -> None:
    return None


def trivial() -> None:
    return None


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes ``pids`` so far."""
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def submit_round(sup: Supervisor, n: int) -> tuple[float, float, list[int]]:
    """Tasks/s, CPU microseconds per task (all processes) and tasks done per worker."""
    before = {w["name"]: w["done"] for w in sup.stats().workers}
    pids = [os.getpid(), *(w["pid"] for w in sup.stats().workers)]
    c0, t0 = cpu_seconds(pids), time.perf_counter()
    futures = [sup.submit(trivial_conn) for _ in range(n)]
    for f in futures:
        f.result(300)
    rate = n / (time.perf_counter() - t0)
    cpu = (cpu_seconds(pids) - c0) / n * 1e6
    after = {w["name"]: w["done"] for w in sup.stats().workers}
    return rate, cpu, sorted((after[k] - before.get(k, 0) for k in after), reverse=True)


def pool_round(pool: Any, n: int) -> tuple[float, float]:
    pids = [os.getpid(), *(p.pid for p in pool._pool)]
    c0, t0 = cpu_seconds(pids), time.perf_counter()
    results = [pool.apply_async(trivial) for _ in range(n)]
    for r in results:
        r.get(300)
    rate = n / (time.perf_counter() - t0)
    return rate, (cpu_seconds(pids) - c0) / n * 1e6


# -- rows produced in the workers ---------------------------------------------------------


def make_rows(part: int, size: int) -> list[tuple[int, str, dt.datetime, float]]:
    base = dt.datetime(2024, 1, 1)
    first = part * size
    return [
        (first + i, f"user{i % 97}", base + dt.timedelta(seconds=i % 86400), i * 0.25)
        for i in range(size)
    ]


def insert_part(conn: Any, table: str, part: int, size: int) -> int:
    rows = make_rows(part, size)
    conn.insert(table, rows, COLUMNS)
    return len(rows)


_CLIENT: Any = None


def pool_insert_part(host: str, port: int, table: str, part: int, size: int) -> int:
    global _CLIENT
    if _CLIENT is None:
        _CLIENT = clickhouse_connect.get_client(host=host, port=port)
    rows = make_rows(part, size)
    _CLIENT.insert(table, rows, column_names=COLUMNS)
    return len(rows)


def fresh_table(client: Any, name: str) -> str:
    client.command(f"DROP TABLE IF EXISTS {name}")
    client.command(DDL.format(t=name))
    return name


def rows_round(run: Callable[[str], None], client: Any, name: str, total: int) -> float:
    table = fresh_table(client, name)
    t0 = time.perf_counter()
    run(table)
    elapsed = time.perf_counter() - t0
    got = int(client.query(f"SELECT count() FROM {table}").result_rows[0][0])
    assert got == total, f"{name}: {got} rows, expected {total}"
    client.command(f"DROP TABLE {table}")
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["lease", "submit", "rows"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lease-n", type=int, default=5_000, help="round trips per round")
    parser.add_argument("--tasks", type=int, default=10_000, help="submit tasks per round")
    parser.add_argument("--parts", type=int, default=20, help="row parts per round")
    parser.add_argument("--part-rows", type=int, default=50_000, help="rows per part")
    parser.add_argument("--start-method", default="forkserver")
    args = parser.parse_args()
    only = args.only
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    if only in (None, "lease"):
        got: dict[str, list[tuple[float, float]]] = {"fork": [], "spawn": []}
        for _ in range(args.rounds):
            for method in got:
                got[method].append(lease_round(args.lease_n, method))
        for method, runs in got.items():
            p50 = [r[0] * 1e6 for r in runs]
            p99 = [r[1] * 1e6 for r in runs]
            print(
                f"lease acquire+release ({method}, {args.lease_n} x {args.rounds}): "
                f"p50 {spread(p50)} us;  p99 {spread(p99)} us"
            )

    if only in (None, "submit", "rows"):
        with (
            tempfile.TemporaryDirectory() as tmp,
            EmbeddedClickHouse(tmp) as ch,
            Supervisor(
                ch.url, workers=2, start_method=args.start_method, queue_size=args.tasks
            ) as sup,
        ):
            ctx = multiprocess.get_context("fork")
            with ctx.Pool(2) as pool:
                client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
                if only in (None, "submit"):
                    submit_round(sup, 1000)  # warm up both
                    pool_round(pool, 1000)
                    sub, apl, sub_cpu, apl_cpu, shares = [], [], [], [], []
                    for _ in range(args.rounds):
                        rate, cpu, done = submit_round(sup, args.tasks)
                        sub.append(rate)
                        sub_cpu.append(cpu)
                        shares.append(done)
                        rate, cpu = pool_round(pool, args.tasks)
                        apl.append(rate)
                        apl_cpu.append(cpu)
                    ratio = [s / a for s, a in zip(sub, apl, strict=True)]
                    print(f"submit(trivial), 2 workers, {args.tasks} x {args.rounds}:")
                    print(f"   sup.submit          {spread(sub)} tasks/s")
                    print(f"   Pool.apply_async    {spread(apl)} tasks/s")
                    print(f"   ratio               {spread(ratio)}x")
                    print(f"   CPU per task, all processes: sup.submit {spread(sub_cpu)} us")
                    print(f"                                apply_async {spread(apl_cpu)} us")
                    print(f"   tasks per worker, by round: {shares}")
                if only in (None, "rows"):
                    parts, size = args.parts, args.part_rows
                    total = parts * size
                    hp = (ch.host, ch.port)

                    def via_sup(table: str) -> None:
                        futures = [sup.submit(insert_part, table, p, size) for p in range(parts)]
                        assert sum(f.result(600) for f in futures) == total

                    def via_pool(table: str) -> None:
                        results = [
                            pool.apply_async(pool_insert_part, (*hp, table, p, size))
                            for p in range(parts)
                        ]
                        assert sum(r.get(600) for r in results) == total

                    rows_round(via_sup, client, "warm_sup", total)
                    rows_round(via_pool, client, "warm_pool", total)
                    s_rates, p_rates = [], []
                    for r in range(args.rounds):
                        s_rates.append(rows_round(via_sup, client, f"sup{r}", total))
                        p_rates.append(rows_round(via_pool, client, f"pool{r}", total))
                    ratio = [s / p for s, p in zip(s_rates, p_rates, strict=True)]
                    print(f"rows built in the workers, {parts} x {size} rows x {args.rounds}:")
                    print(f"   sup.submit(fn, part) {spread(s_rates)} rows/s")
                    print(f"   Pool(2) apply_async  {spread(p_rates)} rows/s")
                    print(f"   ratio                {spread(ratio)}x")
                client.close()
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
