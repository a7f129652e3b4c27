"""What spooling a sharded batch twice costs: whole first, then its parts.

Run: ``flock /work/coord/bench.lock .venv/bin/python benchmarks/bench_shard_spool.py``
(``--rows``, ``--shards``, ``--rounds``, ``--dir``: a directory on the disk the spool
would be on; the default is the system's temporary directory).

A batch of a keyed pipeline on a sharded cluster is spooled whole (its source's
position committed, an HTTP push answered), then the splitter reads it back and replaces
it by one part per shard (:meth:`~chworkers.daemon.spool.Spool.replace`: each part
written and fsync'd, then the whole removed, which is the commit). Cases, interleaved
round by round, medians reported (no ClickHouse: the spool alone):

- ``today``: ``put`` the whole (fsync'd), ``read_batch`` it back, ``replace`` it by
  its parts;
- ``parts only``: ``put`` each part (fsync'd) and nothing else: the floor a split
  before the first spool write could reach (it would still need a commit point for the
  group, at least one more fsync, which this does not count);
- ``split CPU``: the split itself (reading the key of every record and routing it),
  which both paths pay.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from chworkers.clickhouse.sharding import ShardingKey, ShardRouter
from chworkers.daemon.batchfile import read_batch
from chworkers.daemon.keycolumns import Column
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.shardsplit import split_records
from chworkers.daemon.spool import Spool


def payload(rows: int) -> bytes:
    return b"".join(
        b'{"user_id":%d,"event":"click","value":%d.5,"ts":"2026-12-01 10:00:00"}\n'
        % (i * 7919 % 100_003, i)
        for i in range(rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    data = payload(args.rows)
    router = ShardRouter([1] * args.shards)
    columns = [Column("user_id", "UInt64"), Column("event", "String")]
    key = ShardingKey.parse("sipHash64(user_id)").bind({c.name: c.type for c in columns})
    base = Path(tempfile.mkdtemp(prefix="bench-shard-spool-", dir=args.dir))
    times: dict[str, list[float]] = {"today": [], "parts only": [], "split CPU": []}
    try:
        for r in range(args.rounds):
            started = time.perf_counter()
            split = split_records(
                data, format="JSONEachRow", token=f"t{r}", key=key, columns=columns, router=router
            )
            times["split CPU"].append(time.perf_counter() - started)

            spool = Spool(base / f"today-{r}", SpoolSettings(fsync=True))
            started = time.perf_counter()
            whole = spool.put("ev", data, format="JSONEachRow", rows=args.rows, pipeline="p")
            assert whole.path is not None
            full = read_batch(whole.path)
            spool.replace(full, split.parts)
            times["today"].append(time.perf_counter() - started)

            spool = Spool(base / f"parts-{r}", SpoolSettings(fsync=True))
            started = time.perf_counter()
            for part in split.parts:
                spool.put(
                    "ev",
                    part.payload,
                    format="JSONEachRow",
                    rows=part.rows,
                    pipeline="p",
                    meta=dict(part.meta),
                    token=part.token,
                )
            times["parts only"].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    size = len(data) / 1e6
    print(f"{args.rows:,} rows ({size:.1f} MB) in {args.shards} parts, {args.rounds} rounds")
    for case, values in times.items():
        median = statistics.median(values)
        print(f"  {case:<11} {median * 1000:8.1f} ms  ({args.rows / median:,.0f} rows/s)")
    print(f"  load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
