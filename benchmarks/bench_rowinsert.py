"""Row inserts from one producer: ``Supervisor.insert(rows)`` against a plain loop.

Run: ``.venv/bin/python benchmarks/bench_rowinsert.py`` (starts its own embedded
ClickHouse). Issue 11's first target: same data, same endpoint, table ``(id UInt64, user
String, ts DateTime, value Float64)``, 2M rows in 100k batches; ``workers=1`` >= 0.95x a
plain clickhouse-connect insert loop, ``workers=2`` >= 1.2x it. The paths run
interleaved for ``--rounds`` rounds and the table shows medians (min-max) and the ratio
of medians to the plain loop; supervisors are started (and have looked the table up)
before the clock starts.

``--only encode`` times the producer's part alone: one batch encoded by
clickhouse-connect's serializer and by ``chworkers.clickhouse.nativecols``.
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
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.insert import InsertContext
from clickhouse_connect.driver.transform import NativeTransform

from chworkers import EmbeddedClickHouse, Supervisor
from chworkers.clickhouse import native

COLUMNS = ["id", "user", "ts", "value"]
TYPES = ["UInt64", "String", "DateTime", "Float64"]
DDL = "CREATE TABLE {t} (id UInt64, user String, ts DateTime, value Float64) ENGINE = MergeTree ORDER BY id"


def rows_for(batch: int, size: int) -> list[tuple[int, str, dt.datetime, float]]:
    base = dt.datetime(2024, 1, 1) + dt.timedelta(seconds=batch * size)
    return [
        (batch * size + i, f"user{i % 97}", base + dt.timedelta(seconds=i), i * 0.25)
        for i in range(size)
    ]


def clickhouse_connect_native(rows: list[Any]) -> bytes:
    ctx = InsertContext("t", COLUMNS, [get_from_name(t) for t in TYPES], rows)
    body = b"".join(NativeTransform.build_insert(ctx))
    return body[body.index(b"FORMAT Native\n") + 14 :]


def bench_encode(size: int, rounds: int) -> None:
    rows = rows_for(0, size)
    schema = native.TableSchema("t", tuple(COLUMNS), tuple(TYPES), dt.UTC)
    ours = native.encode(schema, rows, False)
    assert ours == clickhouse_connect_native(rows), "not clickhouse-connect's bytes"
    cases: dict[str, Callable[[], Any]] = {
        "clickhouse-connect serializer": lambda: clickhouse_connect_native(rows),
        "chworkers nativecols": lambda: native.encode(schema, rows, False),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(f"\n== encode: one batch of {size} rows ({', '.join(TYPES)}), {rounds} rounds")
    base = statistics.median(times["clickhouse-connect serializer"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{name:<34}{med * 1e3:>8.1f} ms  ({min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f})"
            f"  {base / med:>5.2f}x"
        )


def fresh(client: Any, table: str) -> str:
    client.command(f"DROP TABLE IF EXISTS {table}")
    client.command(DDL.format(t=table))
    return table


def bench_insert(batches: int, size: int, rounds: int, workers: list[int], method: str) -> None:
    data = [rows_for(b, size) for b in range(batches)]
    total = batches * size
    print(
        f"\n== insert: {batches} batches x {size} rows = {total:,} rows, {rounds} interleaved "
        f"rounds, start method {method}, load average {os.getloadavg()[0]:.1f} at start"
    )
    with tempfile.TemporaryDirectory() as tmp, EmbeddedClickHouse(f"{tmp}/data") as ch:
        client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
        sups: dict[int, Supervisor] = {}
        try:
            for n in workers:
                sup = Supervisor(
                    ch.url, workers=n, max_connections=n, start_method=method, queue_size=64
                )
                sup.start()
                fresh(client, f"w{n}")
                sup.insert(f"w{n}", data[0][:10], COLUMNS).result(60)  # looks the table up
                sups[n] = sup

            def plain() -> None:
                table = fresh(client, "plain")
                t0 = time.perf_counter()
                for rows in data:
                    client.insert(table, rows, column_names=COLUMNS)
                times["plain clickhouse-connect loop"].append(time.perf_counter() - t0)

            def supervised(n: int) -> None:
                table = fresh(client, f"w{n}")
                t0 = time.perf_counter()
                futures = [sups[n].insert(table, rows, COLUMNS) for rows in data]
                for f in futures:
                    f.result(600)
                times[f"Supervisor(workers={n}).insert"].append(time.perf_counter() - t0)
                got = client.query(f"SELECT count() FROM {table}").result_rows[0][0]
                assert got == total, (table, got)

            paths: list[Callable[[], None]] = [plain]
            paths += [lambda n=n: supervised(n) for n in workers]  # type: ignore[misc]
            times: dict[str, list[float]] = {"plain clickhouse-connect loop": []}
            times.update({f"Supervisor(workers={n}).insert": [] for n in workers})
            for r in range(rounds):
                for path in paths if r % 2 == 0 else paths[::-1]:
                    path()
        finally:
            for sup in sups.values():
                sup.stop()
            client.close()
    base = total / statistics.median(times["plain clickhouse-connect loop"])
    print(f"{'path':<36}{'rows/s (median)':>16}   {'min-max':<22}{'ratio':>6}")
    for name, ts in times.items():
        rate = total / statistics.median(ts)
        lo, hi = total / max(ts), total / min(ts)
        print(f"{name:<36}{rate:>16,.0f}   {lo:>9,.0f}-{hi:<12,.0f}{rate / base:>6.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["encode", "insert"])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--start-method", default="forkserver")
    args = parser.parse_args()
    if args.only in (None, "encode"):
        bench_encode(args.batch_size, max(args.rounds, 9))
    if args.only in (None, "insert"):
        bench_insert(args.batches, args.batch_size, args.rounds, args.workers, args.start_method)


if __name__ == "__main__":
    main()
