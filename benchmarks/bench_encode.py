"""The producer's part of a row insert: Native encoding by clickhouse-connect and by
``chworkers.clickhouse.nativecols``, for issue 11's table and type by type.

Run: ``.venv/bin/python benchmarks/bench_encode.py`` (no server needed). Each case
encodes the same 100,000 values both ways, interleaved for ``--rounds`` rounds, checks the
bytes are the same, and prints medians (min-max) and the speed-up. The insert paths
themselves (plain loop, ``Supervisor(workers=1/2).insert``) are measured by
``chworkers bench --only rows``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.insert import InsertContext
from clickhouse_connect.driver.transform import NativeTransform

from chworkers.clickhouse import nativecols

BASE = dt.datetime(2024, 1, 1)


def issue_rows(n: int) -> list[tuple[Any, ...]]:
    return [(i, f"user{i % 97}", BASE + dt.timedelta(seconds=i), i * 0.25) for i in range(n)]


def one_column(n: int, make: Callable[[int], Any]) -> list[tuple[Any, ...]]:
    return [(make(i),) for i in range(n)]


def cases(n: int) -> list[tuple[str, list[str], list[tuple[Any, ...]]]]:
    day = dt.date(2024, 1, 1)
    uuids = [uuid.UUID(int=i * 7919 + 1) for i in range(n)]
    return [
        ("issue 11's table", ["UInt64", "String", "DateTime", "Float64"], issue_rows(n)),
        ("DateTime", ["DateTime"], one_column(n, lambda i: BASE + dt.timedelta(seconds=i))),
        (
            "DateTime64(3, 'UTC')",
            ["DateTime64(3, 'UTC')"],
            one_column(n, lambda i: BASE + dt.timedelta(microseconds=i * 1001)),
        ),
        ("Date", ["Date"], one_column(n, lambda i: day + dt.timedelta(days=i % 1000))),
        ("UUID", ["UUID"], one_column(n, lambda i: uuids[i])),
        ("FixedString(8)", ["FixedString(8)"], one_column(n, lambda i: f"{i:08d}")),
        (
            "LowCardinality(String)",
            ["LowCardinality(String)"],
            one_column(n, lambda i: f"k{i % 50}"),
        ),
        (
            "Nullable(Int64)",
            ["Nullable(Int64)"],
            one_column(n, lambda i: None if i % 5 == 0 else i),
        ),
        (
            "Nullable(String)",
            ["Nullable(String)"],
            one_column(n, lambda i: None if i % 3 == 0 else f"u{i}"),
        ),
        (
            "Int32, Float64, String (theirs)",
            ["Int32", "Float64", "String"],
            [(i, i * 0.5, f"s{i % 1000}") for i in range(n)],
        ),
    ]


def theirs(names: Sequence[str], types: Sequence[str], rows: list[Any]) -> bytes:
    ctx = InsertContext("t", list(names), [get_from_name(t) for t in types], rows)
    body = b"".join(NativeTransform.build_insert(ctx))
    return body[body.index(b"FORMAT Native\n") + 14 :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(
        f"== Native encoding of {args.rows:,} rows, {args.rounds} interleaved rounds, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'columns':<34}{'clickhouse-connect ms':>22}{'nativecols ms':>20}{'speed-up':>10}")
    for title, types, rows in cases(args.rows):
        names = [f"c{k}" for k in range(len(types))]
        encoders = [nativecols.ColumnEncoder(n, t) for n, t in zip(names, types, strict=True)]

        def ours(rows: list[Any] = rows, encoders: list[Any] = encoders) -> bytes | None:
            return nativecols.encode_columns("t", encoders, rows, False, dt.UTC)

        assert ours() == theirs(names, types, rows), f"{title}: not clickhouse-connect's bytes"
        times: dict[str, list[float]] = {"theirs": [], "ours": []}
        for _ in range(args.rounds):
            paths = (("theirs", partial(theirs, names, types, rows)), ("ours", ours))
            for key, fn in paths:
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        cells = []
        for key in ("theirs", "ours"):
            ts = times[key]
            cells.append(
                f"{statistics.median(ts) * 1e3:.1f} ({min(ts) * 1e3:.0f}-{max(ts) * 1e3:.0f})"
            )
        ratio = statistics.median(times["theirs"]) / statistics.median(times["ours"])
        print(f"{title:<34}{cells[0]:>22}{cells[1]:>20}{ratio:>9.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
