"""The daemon on a Parquet file vs ``INSERT ... FORMAT Parquet`` of the same file.

One embedded ClickHouse; a Parquet file of ``--rows`` rows (an events-like schema,
row groups of ``--row-group`` rows, snappy). In interleaved rounds, each into a fresh
table:

* ``raw POST``: the whole file as the body of ``INSERT INTO t FORMAT Parquet`` (one HTTP
  request, what a script with curl does);
* ``INFILE``: ``INSERT INTO t FROM INFILE '<file>' FORMAT Parquet`` (the engine reads the
  file itself; no HTTP body), when the engine supports it;
* ``daemon whole``: ``chworkers run`` (in-process, spool fsync on) with limits the file
  fits: the file is one batch, sent byte for byte;
* ``daemon cut``: the same with ``max_rows`` = ``--batch-rows``: the file cut on row
  groups, each batch a Parquet file written again by pyarrow.

The daemon's time is from its start (workers, pool, table creation) to its exit with
every row inserted, so it includes its start-up (reported apart: ``daemon, no rows``).
Reports the median seconds and rows/s of each; the count is checked after every run.

Run (under the bench lock): ``flock /work/coord/bench.lock .venv/bin/python
benchmarks/bench_columnfiles.py [--rows 2000000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from chworkers.daemon import config
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse

SCHEMA = "ts DateTime, user_id UInt64, event String, value Float64, url String"


def make_file(path: Path, rows: int, row_group: int) -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    events = np.array(["view", "click", "purchase", "signup", "logout"])
    data = pa.table(
        {
            "ts": pa.array(1_700_000_000 + np.arange(rows) // 1000, pa.uint32()),
            "user_id": pa.array(rng.integers(0, 100_000, rows), pa.uint64()),
            "event": pa.array(events[rng.integers(0, 5, rows)]),
            "value": pa.array(rng.random(rows) * 100),
            "url": pa.array([f"/p/{i % 1000}" for i in range(rows)]),
        }
    )
    pq.write_table(data, path, row_group_size=row_group, compression="snappy")


def request(ch: EmbeddedClickHouse, sql: str, body: bytes = b"") -> bytes:
    conn = http.client.HTTPConnection(ch.host, ch.port, timeout=600)
    try:
        conn.request("POST", "/?" + urllib.parse.urlencode({"query": sql}), body=body)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{sql[:60]}: HTTP {response.status}: {data[:300]!r}")
        return data
    finally:
        conn.close()


def fresh(ch: EmbeddedClickHouse, table: str) -> None:
    request(ch, f"DROP TABLE IF EXISTS {table}")
    request(
        ch,
        f"CREATE TABLE {table} ({SCHEMA}) ENGINE = MergeTree ORDER BY tuple() "
        "SETTINGS non_replicated_deduplication_window = 1000",
    )


def count(ch: EmbeddedClickHouse, table: str) -> int:
    return int(request(ch, f"SELECT count() FROM {table}").strip())


def daemon(ch: EmbeddedClickHouse, state: Path, path: Path, table: str, rows: int) -> None:
    data: dict[str, Any] = {
        "state_dir": str(state),
        "clickhouse": {"url": ch.url},
        "metrics": {"port": 0},
        "http": {"port": 0},
        "pipelines": (
            []
            if rows == 0
            else [
                {
                    "name": "bf",
                    "source": "file",
                    "paths": [str(path)],
                    "format": "Parquet",
                    "table": table,
                    "settle": 0,
                    "max_rows": rows,
                    "max_bytes": 1 << 30,
                }
            ]
        ),
    }
    if rows == 0:  # start-up alone: a pipeline that reads an empty glob
        data["pipelines"] = [
            {
                "name": "bf",
                "source": "file",
                "paths": [str(state / "none-*.parquet")],
                "format": "Parquet",
                "table": table,
            }
        ]
    assert Daemon(config.load(data=data, env={})).run() == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--row-group", type=int, default=100_000)
    parser.add_argument("--batch-rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "events.parquet"
        make_file(path, args.rows, args.row_group)
        body = path.read_bytes()
        print(
            f"{path.name}: {args.rows} rows, {len(body) / 1e6:.1f} MB, "
            f"{pq.ParquetFile(path).metadata.num_row_groups} row groups"
        )
        ch = EmbeddedClickHouse(root / "ch")
        ch.start()
        times: dict[str, list[float]] = {}
        try:
            infile = True
            for round_ in range(args.rounds):
                modes = ["raw POST", "INFILE", "daemon whole", "daemon cut", "daemon, no rows"]
                for mode in modes:
                    if mode == "INFILE" and not infile:
                        continue
                    table = f"t_{round_}_{modes.index(mode)}"
                    fresh(ch, table)
                    state = root / f"state-{table}"
                    started = time.perf_counter()
                    try:
                        if mode == "raw POST":
                            request(ch, f"INSERT INTO {table} FORMAT Parquet", body)
                        elif mode == "INFILE":
                            request(ch, f"INSERT INTO {table} FROM INFILE '{path}' FORMAT Parquet")
                        elif mode == "daemon whole":
                            daemon(ch, state, path, table, args.rows)
                        elif mode == "daemon cut":
                            daemon(ch, state, path, table, args.batch_rows)
                        else:
                            daemon(ch, state, path, table, 0)
                    except RuntimeError as exc:
                        if mode != "INFILE":
                            raise
                        print(f"INFILE not supported here: {exc}")
                        infile = False
                        continue
                    elapsed = time.perf_counter() - started
                    expected = 0 if mode == "daemon, no rows" else args.rows
                    got = count(ch, table)
                    assert got == expected, f"{mode}: {got} rows, expected {expected}"
                    times.setdefault(mode, []).append(elapsed)
                    request(ch, f"DROP TABLE {table}")
        finally:
            ch.close()
    print(f"median of {args.rounds} interleaved rounds:")
    for mode, values in times.items():
        median = statistics.median(values)
        rate = "" if mode == "daemon, no rows" else f"  {args.rows / median / 1e6:.2f} M rows/s"
        print(f"  {mode:16} {median:7.2f} s{rate}")


if __name__ == "__main__":
    main()
