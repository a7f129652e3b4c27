"""Rows/s into three shards by key against one shard, and against the naive alternative.

Run: ``flock /work/coord/bench.lock .venv/bin/python benchmarks/bench_shards.py``
(starts three embedded ClickHouse endpoints as the shards; ``--rows``, ``--batch``,
``--rounds``, ``--workers``).

Cases, interleaved round by round (medians reported):

- ``1 shard``: ``Supervisor(url).insert(table, batch)``, every row to one endpoint;
- ``3 shards by key``: ``Supervisor(url, shards=3).insert(table, batch,
  sharding_key="sipHash64(user_id)")``: the key evaluated and the batch split in the
  producer, one part per shard as its own task;
- ``naive``: one clickhouse-connect client per shard, the rows split in Python (by the
  same key, evaluated for the batch by the same key code, so the routing is the same and
  the naive path is not charged for hashing), each part inserted in turn from the calling
  thread, as a script without chworkers would;
- ``naive, a thread per shard``: the same with the three inserts of a batch in parallel;
- ``naive, 1 shard``: one client, every row to one endpoint: what the endpoints cost
  apart from the client (three chDB servers on the same cores take more than one).

After every case the three tables hold exactly the rows sent (checked), then they are
emptied. The endpoints share the machine's cores with the workers and the producer: the
figures compare the paths on one machine, they are not a cluster's throughput.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import clickhouse_connect

from chworkers import EmbeddedClickHouse, ShardingKey, ShardRouter, Supervisor

KEY = "sipHash64(user_id)"
COLUMNS = {"user_id": "String", "n": "UInt64", "v": "Int32"}
DDL = "CREATE TABLE IF NOT EXISTS bench_shards (user_id String, n UInt64, v Int32) ENGINE = MergeTree ORDER BY n"


def make_batches(rows: int, batch: int) -> list[list[tuple[str, int, int]]]:
    rng = random.Random(14)
    users = [f"user-{i}" for i in range(10_000)]
    data = [(rng.choice(users), i, rng.randint(-(2**31), 2**31 - 1)) for i in range(rows)]
    return [data[i : i + batch] for i in range(0, rows, batch)]


def run_supervisor(sup: Supervisor, batches: list[Any], sharded: bool) -> None:
    names = list(COLUMNS)
    futures = [
        sup.insert("bench_shards", b, names, sharding_key=KEY if sharded else None) for b in batches
    ]
    for f in futures:
        f.result(600)


def run_naive(clients: list[Any], batches: list[Any], threaded: bool) -> None:
    bound = ShardingKey.parse(KEY).bind(COLUMNS)
    router = ShardRouter([1] * len(clients))
    names = list(COLUMNS)
    for b in batches:
        parts: list[list[Any]] = [[] for _ in clients]
        shards = router.indexes(bound.evaluate([[row[0] for row in b]]))
        for row, shard in zip(b, shards, strict=True):  # rows split in Python
            parts[shard].append(row)
        if not threaded:
            for client, part in zip(clients, parts, strict=True):
                if part:
                    client.insert("bench_shards", part, column_names=names)
            continue
        threads = [
            threading.Thread(
                target=client.insert, args=("bench_shards", part), kwargs={"column_names": names}
            )
            for client, part in zip(clients, parts, strict=True)
            if part
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows per case and round")
    parser.add_argument("--batch", type=int, default=10_000, help="rows per insert call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    base = tempfile.mkdtemp(prefix="bench-shards-")
    endpoints = [EmbeddedClickHouse(os.path.join(base, f"shard{i}")) for i in range(3)]
    for ch in endpoints:
        ch.start()
    clients = [clickhouse_connect.get_client(host=ch.host, port=ch.port) for ch in endpoints]
    for c in clients:
        c.command(DDL)
    batches = make_batches(args.rows, args.batch)
    urls = [ch.url for ch in endpoints]
    opts: dict[str, Any] = {"workers": args.workers, "start_method": "fork"}
    one = Supervisor(urls[0], **opts).start()
    three = Supervisor(urls[0], shards=[[u] for u in urls], **opts).start()
    cases: dict[str, tuple[Callable[[], None], int, int]] = {
        "1 shard (Supervisor.insert)": (lambda: run_supervisor(one, batches, False), args.rows, 1),
        "3 shards by key (insert sharding_key=)": (
            lambda: run_supervisor(three, batches, True),
            args.rows,
            3,
        ),
        "naive, 1 shard: one client, every row": (
            lambda: run_naive(clients[:1], batches, False),
            args.rows,
            1,
        ),
        "naive: a client per shard, rows split in Python": (
            lambda: run_naive(clients, batches, False),
            args.rows,
            3,
        ),
        "naive, a thread per shard": (
            lambda: run_naive(clients, batches, True),
            args.rows,
            3,
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(args.rounds):
            for name, (run, rows, shards) in cases.items():
                for c in clients:
                    c.command("TRUNCATE TABLE bench_shards")
                started = time.perf_counter()
                run()
                elapsed = time.perf_counter() - started
                counts = [
                    c.query("SELECT count() FROM bench_shards").result_rows[0][0] for c in clients
                ]
                if sum(counts) != rows or sum(1 for n in counts if n) != shards:
                    raise SystemExit(
                        f"{name}: expected {rows} rows on {shards} shard(s), got {counts}"
                    )
                results[name].append(rows / elapsed)
                print(f"  {name}: {rows / elapsed:,.0f} rows/s ({counts})", flush=True)
    finally:
        one.stop()
        three.stop()
        for c in clients:
            c.close()
        for ch in endpoints:
            ch.close()
    print(
        f"\n{args.rows:,} rows in batches of {args.batch:,}, {args.workers} workers, median of {args.rounds}:"
    )
    for name, rates in results.items():
        print(
            f"  {name:50s} {statistics.median(rates):>12,.0f} rows/s  (rounds: {', '.join(f'{r:,.0f}' for r in rates)})"
        )
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
