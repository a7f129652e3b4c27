"""What the check of a synchronous insert against the asynchronous inserts' ids costs.

Before a synchronous insert, the embedded endpoint asks whether it repeats the token of
an asynchronous insert into its table (``chworkers/embedded/crossdedup.py``). This
calls that check, in-process against a real chDB table, for an insert with a token in
three states of the endpoint: no table has ids (the check stops at once), another
table has them (the insert's table is looked up), its own table has them (the token is
hashed and looked up too), and reports the CPU microseconds per call, the median of
``--rounds`` interleaved rounds of ``--calls``.

Run: ``.venv/bin/python benchmarks/bench_crossdedup.py [--calls 2000] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from chworkers.embedded import crossdedup, engine, queries, sql
from chworkers.embedded.asyncdedup import AsyncDedup
from chworkers.embedded.request import QueryRequest
from chworkers.embedded.tracked import TrackedConnection

MERGE_TREE = "ENGINE = MergeTree ORDER BY k SETTINGS non_replicated_deduplication_window = 1000"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        eng = engine.Engine(Path(tmp) / "data")
        conn = eng.connect()
        paths = {}
        for table in ("t", "other"):
            queries.run(conn, f"CREATE TABLE {table} (k UInt64) {MERGE_TREE}")
            res = queries.run(
                conn, f"SELECT data_paths[1] FROM system.tables WHERE name = '{table}'", "TSVRaw"
            )
            paths[table] = res.bytes().decode().strip()
        head = sql.parse_insert(b"INSERT INTO t FORMAT JSONEachRow\n", complete=True)
        assert head is not None
        states = {
            "no table has ids": [],
            "another table has ids": [paths["other"]],
            "its table has ids": [paths["other"], paths["t"]],
        }
        results: dict[str, list[float]] = {label: [] for label in states}
        for _ in range(args.rounds):
            for label, with_ids in states.items():
                dedup = AsyncDedup(Path(tmp) / "fallback")
                for storage in with_ids:
                    dedup.begin(storage, 1000, "flush", ["id"])
                    dedup.commit(storage, 1000, "flush", ["id"])
                handle = TrackedConnection(conn=conn)
                qr = QueryRequest(
                    method="POST",
                    params={"database": "default"},
                    settings={"insert_deduplication_token": "abc"},
                )
                crossdedup.duplicate(dedup, handle, qr, head)  # the caches, as in use
                started = time.process_time()
                for _ in range(args.calls):
                    crossdedup.duplicate(dedup, handle, qr, head)
                results[label].append((time.process_time() - started) / args.calls * 1e6)
        conn.close()
        eng.close()
    print(f"median of {args.rounds} rounds of {args.calls} calls, load {os.getloadavg()[0]:.1f}:")
    for label, values in results.items():
        spread = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {label:22} {statistics.median(values):6.1f} us CPU per insert  ({spread})")


if __name__ == "__main__":
    main()
