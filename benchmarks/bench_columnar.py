"""Benchmark the columnar and raw insert paths against clickhouse-connect and raw POSTs.

Same data, same endpoint, same request shape: each case runs a baseline (what a user
would write without chworkers) and ``Supervisor.insert``/``insert_raw`` with 1 and 2
workers, interleaved round by round (the order rotates), into a fresh table each time.
Prints medians, min and max in rows/s and the ratio of the medians (issue 11's targets:
DataFrame >= 1.0x ``insert_df``, Arrow tables and slices >= 1.0x ``insert_arrow``,
``insert_raw`` >= 0.8x a raw POST from 10k to 2M rows).

Run: ``.venv/bin/python benchmarks/bench_columnar.py [--rows N] [--rounds K] [--only CASE]``
(starts its own embedded ClickHouse unless ``--url`` is given).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import clickhouse_connect
import numpy as np
import pandas as pd
import pyarrow as pa

from chworkers import EmbeddedClickHouse, Supervisor

DDL = (
    "CREATE TABLE {t} (id UInt64, user String, ts DateTime, value Float64) "
    "ENGINE = MergeTree ORDER BY id"
)
NAMES = ["id", "user", "ts", "value"]


def frame(start: int, n: int) -> pd.DataFrame:
    ids = np.arange(start, start + n, dtype=np.uint64)
    return pd.DataFrame(
        {
            "id": ids,
            "user": np.array([f"user{i % 97}" for i in range(start, start + n)], dtype=object),
            "ts": (np.datetime64("2024-01-01T00:00:00", "s") + (ids % 86400).astype("m8[s]")),
            "value": ids.astype(np.float64) * 0.25,
        }
    )


def arrow_of(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


class Raw:
    """A plain HTTP/1.1 client POSTing bodies as they are (the raw-POST ceiling)."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=600)

    def insert(self, table: str, body: bytes, fmt: str) -> None:
        query = urllib.parse.quote(f"INSERT INTO {table} FORMAT {fmt}")
        try:
            self.conn.request("POST", f"/?query={query}", body=body)
            resp = self.conn.getresponse()
        except (ConnectionError, http.client.HTTPException):
            # The server closed the kept-alive connection: once more on a new one.
            self.conn.close()
            self.conn.request("POST", f"/?query={query}", body=body)
            resp = self.conn.getresponse()
        text = resp.read()
        if resp.status != 200:
            raise SystemExit(f"raw insert failed: {resp.status} {text[:300]!r}")

    def close(self) -> None:
        self.conn.close()


def native_payload(client: Any, table: str, df: pd.DataFrame) -> bytes:
    """``df`` as one Native block, by clickhouse-connect (what a producer would have)."""
    from clickhouse_connect.driver.transform import NativeTransform

    ctx = client.create_insert_context(table, NAMES, data=df)
    ctx.data = df
    body = b"".join(NativeTransform.build_insert(ctx))
    return body[body.index(b"FORMAT Native\n") + 14 :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", action="append", help="case name prefix (repeatable)")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2")
    parser.add_argument("--url", help="a ClickHouse URL instead of a fresh embedded endpoint")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.url:
        run(args, args.url)
        return
    with tempfile.TemporaryDirectory() as tmp, EmbeddedClickHouse(f"{tmp}/data") as ch:
        run(args, ch.url)


def run(args: argparse.Namespace, url: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname or "localhost", parsed.port or 8123
    client = clickhouse_connect.get_client(host=host, port=port)
    raw = Raw(host, port)
    total, size = args.rows, args.batch
    frames = [frame(s, min(size, total - s)) for s in range(0, total, size)]
    whole = arrow_of(pd.concat(frames, ignore_index=True))
    tables = [arrow_of(df) for df in frames]
    slices = [whole.slice(s, size) for s in range(0, total, size)]
    client.command(DDL.format(t="shape"))
    native_all = native_payload(client, "shape", pd.concat(frames, ignore_index=True))
    native_batches = {
        n: [
            native_payload(client, "shape", frame(s, min(n, total - s))) for s in range(0, total, n)
        ]
        for n in (10_000, 100_000)
    }
    numpy_cols = [{c: df[c].to_numpy() for c in NAMES} for df in frames]

    seq = [0]

    def fresh() -> str:
        seq[0] += 1
        name = f"b{seq[0]}"
        client.command(DDL.format(t=name))
        return name

    def drop(name: str) -> None:
        client.command(f"DROP TABLE {name}")

    sups: dict[int, Supervisor] = {}
    for w in (int(x) for x in args.workers.split(",")):
        sups[w] = Supervisor(url, workers=w, max_connections=w, queue_size=32).start()

    def through(w: int, submit: Callable[[Supervisor, str], list[Any]]) -> Callable[[str], None]:
        def go(table: str) -> None:
            for f in submit(sups[w], table):
                f.result(600)

        return go

    cases: dict[str, dict[str, Callable[[str], None]]] = {}

    def case(
        name: str, baseline: str, base: Callable[[str], None], ours: Callable[..., list[Any]]
    ) -> None:
        cases[name] = {baseline: base}
        for w in sups:
            cases[name][f"sup.{'insert' if 'raw' not in name else 'insert_raw'}, {w}w"] = through(
                w, ours
            )

    case(
        "DataFrame",
        "insert_df",
        lambda t: [client.insert_df(t, df) for df in frames] and None,
        lambda sup, t: [sup.insert(t, df) for df in frames],
    )
    case(
        "Arrow tables",
        "insert_arrow",
        lambda t: [client.insert_arrow(t, tb) for tb in tables] and None,
        lambda sup, t: [sup.insert(t, tb) for tb in tables],
    )
    case(
        "Arrow slices",
        "insert_arrow",
        lambda t: [client.insert_arrow(t, s) for s in slices] and None,
        lambda sup, t: [sup.insert(t, s) for s in slices],
    )
    # clickhouse-connect cannot write a datetime64 column: its baseline gets datetimes.
    numpy_base = [
        [*(c[n] for n in NAMES[:2]), c["ts"].astype(object), c["value"]] for c in numpy_cols
    ]
    case(
        "numpy columns",
        "insert(columns)",
        lambda t: [client.insert(t, c, NAMES, column_oriented=True) for c in numpy_base] and None,
        lambda sup, t: [sup.insert(t, c) for c in numpy_cols],
    )
    case(
        f"raw Native 1 x {total}",
        "raw POST",
        lambda t: raw.insert(t, native_all, "Native"),
        lambda sup, t: [sup.insert_raw(t, native_all, "Native", rows=total)],
    )
    for n, bodies in native_batches.items():
        case(
            f"raw Native {len(bodies)} x {n}",
            "raw POST",
            lambda t, b=bodies: [raw.insert(t, x, "Native") for x in b] and None,  # type: ignore[misc]
            lambda sup, t, b=bodies, n=n: [sup.insert_raw(t, x, "Native", rows=n) for x in b],  # type: ignore[misc]
        )
    if args.only:
        cases = {k: v for k, v in cases.items() if any(k.startswith(o) for o in args.only)}

    results: dict[str, dict[str, list[float]]] = {k: {p: [] for p in v} for k, v in cases.items()}
    load = [os.getloadavg()[0]]
    failed: dict[tuple[str, str], str] = {}
    try:
        for r in range(args.rounds):
            for name, paths in cases.items():
                order = list(paths)
                order = order[r % len(order) :] + order[: r % len(order)]
                for path in order:
                    if (name, path) in failed:
                        continue
                    table = fresh()
                    t0 = time.perf_counter()
                    try:
                        paths[path](table)
                    except Exception as exc:
                        failed[name, path] = f"{type(exc).__name__}: {exc}"[:100]
                        drop(table)
                        continue
                    elapsed = time.perf_counter() - t0
                    got = int(client.command(f"SELECT count() FROM {table}"))
                    if got != total:
                        raise SystemExit(f"{name} / {path}: {got} rows, expected {total}")
                    drop(table)
                    results[name][path].append(total / elapsed)
            load.append(os.getloadavg()[0])
            print(f"round {r + 1}/{args.rounds} done (load {load[-1]:.1f})", flush=True)
    finally:
        for sup in sups.values():
            sup.stop()
        raw.close()
    print(
        f"\n{total:,} rows ({', '.join(NAMES)}), {args.rounds} interleaved rounds; "
        f"load average {min(load):.1f}-{max(load):.1f}"
    )
    print(f"{'case':<26}{'path':<22}{'median rows/s':>14}{'min':>12}{'max':>12}{'ratio':>8}")
    out: dict[str, Any] = {}
    for name, paths in results.items():
        base = statistics.median(next(iter(paths.values())))
        for path, rates in paths.items():
            if not rates:
                print(f"{name:<26}{path:<22} failed: {failed.get((name, path))}")
                continue
            med = statistics.median(rates)
            print(
                f"{name:<26}{path:<22}{med:>14,.0f}{min(rates):>12,.0f}{max(rates):>12,.0f}"
                f"{med / base:>8.2f}"
            )
            out.setdefault(name, {})[path] = {
                "median": med,
                "min": min(rates),
                "max": max(rates),
                "ratio": med / base,
            }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
