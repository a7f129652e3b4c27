"""``chworkers run`` into three shards by key against one, and one shard down mid-ingest.

Run: ``flock /work/coord/bench.lock .venv/bin/python benchmarks/bench_shards_daemon.py``
(starts three embedded ClickHouse endpoints as the shards; ``--rows``, ``--rounds``,
``--workers``, ``--outage``).

Cases (the generator source, ``sipHash64(user_id)`` as the key, every row checked in):

- ``1 shard``: the daemon with ``url`` = the first endpoint, no key;
- ``3 shards by key``: ``[clickhouse] shards`` = the three endpoints: each batch spooled
  whole, split into its shards' parts, each part inserted into its shard;

interleaved round by round, medians of rows/s from the start of ``Daemon.run`` to the
last confirmed insert (start-up included, the same for both). Then ``outage``: three
shards, shard 2 behind a TCP proxy that resets every request for ``--outage`` seconds,
from ``--outage / 2`` seconds into the ingest (give ``--rows`` enough for the ingest to
outlast it); the rows/s the other two shards took before and during the
outage, and the check that after it every row is in exactly once (each shard's count
equal to what the split gave it, and the total). With ``--source redis`` the outage run
reads the rows from a Redis Stream instead (a redis-server started here, the rows written
to it first, 100 to an entry), each broker batch split by shard in memory and
acknowledged once all its parts are confirmed; the daemon is stopped once every row is in
and every entry acknowledged.

The endpoints share the machine's cores with the workers and the daemon: the figures
compare the paths on one machine, they are not a cluster's throughput. Figures (1M rows,
2 rounds, 20 s outage, load 3.5-13.6): 1 shard 28,508 rows/s, 3 shards by key 16,009
rows/s; shards 0 and 1 took 12,199 rows/s before the outage and 22,749 during it; all
1,000,000 rows exactly once after (docs/sharding.md). With ``--source redis`` (session 7,
load 11 to 36): see docs/sharding.md, "Broker sources".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import clickhouse_connect

from chworkers.daemon import config
from chworkers.daemon.generator import GENERATOR_SCHEMA
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from faultproxy import FaultProxy  # noqa: E402
from redisserver import RedisServer  # noqa: E402

KEY = "sipHash64(user_id)"


def cfg(
    state: Path,
    target: dict[str, Any],
    rows: int,
    workers: int,
    key: bool,
    redis: str | None = None,
) -> config.Config:
    pipeline: dict[str, Any] = {
        "name": "gen",
        "source": "generator",
        "generator_count": rows,
        "table": "ev",
        "create": GENERATOR_SCHEMA,
        "engine": "MergeTree ORDER BY ts",
        "max_rows": 50_000,
    }
    if key:
        pipeline["sharding_key"] = KEY
    if redis is not None:
        del pipeline["generator_count"]
        pipeline.update(source="redis", max_rows=20_000, redis={"url": redis, "stream": "ev"})
    return config.load(
        data={
            "state_dir": str(state),
            "clickhouse": {
                **target,
                "pool": {"max_connections": 2, "host_cooldown": 0.5},
            },
            "supervisor": {"workers": workers},
            "metrics": {"port": None},
            "spool": {"fsync": True, "retry_backoff_max": 1},
            "http": {"port": 0},
            "pipelines": [pipeline],
        },
        env={},
    )


def count(ch: EmbeddedClickHouse) -> int:
    """Rows in the shard's table (0 when it has none)."""
    client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
    try:
        if not int(client.command("EXISTS TABLE ev")):
            return 0
        return int(client.command("SELECT count() FROM ev"))
    finally:
        client.close()


def misplaced(endpoints: list[EmbeddedClickHouse]) -> list[int]:
    """Per shard, its rows whose key ClickHouse evaluates to another shard (weights 1)."""
    out = []
    for index, ch in enumerate(endpoints):
        client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
        try:
            query = f"SELECT count() FROM ev WHERE {KEY} % {len(endpoints)} != {index}"
            out.append(int(client.command(query)))
        finally:
            client.close()
    return out


def empty(endpoints: list[EmbeddedClickHouse]) -> None:
    for ch in endpoints:
        client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
        client.command("DROP TABLE IF EXISTS ev SYNC")
        client.close()


def run_once(c: config.Config) -> float:
    daemon = Daemon(c)
    start = time.perf_counter()
    assert daemon.run() == 0
    elapsed = time.perf_counter() - start
    assert daemon.totals.rows_inserted == c.pipelines[0].generator_count, daemon.totals
    return elapsed


def throughput(endpoints: list[EmbeddedClickHouse], tmp: Path, args: argparse.Namespace) -> None:
    cases = {
        "1 shard": ({"url": endpoints[0].url}, False),
        "3 shards by key": ({"shards": [[ch.url] for ch in endpoints]}, True),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, (target, key) in cases.items():
            empty(endpoints)
            state = tmp / f"state-{r}-{name.replace(' ', '-')}"
            elapsed = run_once(cfg(state, target, args.rows, args.workers, key))
            held = [count(ch) for ch in endpoints]
            assert sum(held) == args.rows, held
            if key:
                assert misplaced(endpoints) == [0, 0, 0]
            results[name].append(args.rows / elapsed)
            print(f"  round {r + 1} {name:<16} {args.rows / elapsed:>10,.0f} rows/s  {held}")
    print()
    for name, values in results.items():
        print(
            f"{name:<16} median {statistics.median(values):>10,.0f} rows/s ({len(values)} rounds)"
        )


def fill_redis(tmp: Path, rows: int) -> Any:
    """A redis-server with ``rows`` rows of the generator's table in stream ``ev``."""
    server = RedisServer(tmp / "redis")
    server.start()
    per = 100
    for start in range(0, rows, 100_000):
        server.add_entries(
            [
                b"".join(
                    b'{"ts":%d,"user_id":%d,"event":"e%d","value":%d.5,"url":"/p/%d"}\n'
                    % (1_700_000_000 + i, (i * 7919) % 1_000_003, i % 7, i, i)
                    for i in range(first, min(rows, first + per))
                )
                for first in range(start, min(rows, start + 100_000), per)
            ]
        )
    return server


def outage(endpoints: list[EmbeddedClickHouse], tmp: Path, args: argparse.Namespace) -> None:
    empty(endpoints)
    a, b, c = endpoints
    proxy = FaultProxy((c.host, c.port))
    shards = [[a.url], [b.url], [proxy.url]]
    redis = fill_redis(tmp, args.rows) if args.source == "redis" else None
    daemon = Daemon(
        cfg(
            tmp / "state-outage",
            {"shards": shards},
            args.rows,
            args.workers,
            True,
            redis=None if redis is None else redis.url,
        )
    )
    done = threading.Event()
    thread = threading.Thread(target=lambda: (daemon.run(), done.set()))
    thread.start()
    samples: list[tuple[float, int]] = []  # (time, rows in shards 0 and 1)

    def others() -> int:
        return count(a) + count(b)

    try:
        t0 = time.monotonic()
        at = args.outage / 2 if args.outage_at is None else args.outage_at
        while time.monotonic() - t0 < at and not done.is_set():
            samples.append((time.monotonic(), others()))
            time.sleep(1)
        proxy.set("reset")  # every request to shard 2 reset: it is down
        down_at = time.monotonic()
        print(f"shard 2 refused at {down_at - t0:.1f} s")
        while time.monotonic() - down_at < args.outage and not done.is_set():
            samples.append((time.monotonic(), others()))
            time.sleep(1)
        up_at = time.monotonic()
        proxy.set("pass")
        print(f"shard 2 back at {up_at - t0:.1f} s")
        if redis is not None:  # a broker source runs until stopped: once all is in
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and not (
                sum(count(ch) for ch in endpoints) >= args.rows and redis.settled()
            ):
                time.sleep(1)
            print(f"all in and acknowledged at {time.monotonic() - t0:.1f} s")
            daemon.request_stop()
        done.wait(600)
    finally:
        thread.join(60)
        proxy.close()
        if redis is not None:
            redis.stop()
    # From the first rows in: the daemon's start-up (workers, tables) is not ingest.
    before = [s for s in samples if s[0] < down_at and s[1] > 0]
    during = [s for s in samples if down_at <= s[0] <= up_at]

    def rate(points: list[tuple[float, int]]) -> float:
        if len(points) < 2 or points[-1][0] == points[0][0]:
            return 0.0
        return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])

    held = [count(ch) for ch in endpoints]
    print(f"shards 0+1 before the outage: {rate(before):>10,.0f} rows/s")
    print(f"shards 0+1 during the outage: {rate(during):>10,.0f} rows/s")
    wrong = misplaced(endpoints)
    print(f"after: shards hold {held}, total {sum(held):,} of {args.rows:,}; misplaced {wrong}")
    assert sum(held) == args.rows, "rows lost or doubled"
    assert wrong == [0, 0, 0], "rows on a shard their key does not give"
    if redis is not None:  # each row's url is its own: no row twice
        distinct = 0
        for ch in endpoints:
            client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
            distinct += int(client.command("SELECT uniqExact(url) FROM ev"))
            client.close()
        print(f"distinct rows: {distinct:,}")
        assert distinct == args.rows, "a row twice"
    assert daemon.totals.rows_inserted == args.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--outage", type=float, default=20.0, help="seconds shard 2 is down")
    parser.add_argument("--skip-outage", action="store_true")
    parser.add_argument(
        "--source", choices=("generator", "redis"), default="generator", help="of the outage run"
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--outage-at", type=float, default=None, help="seconds into the ingest (--outage / 2)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chw-shards-daemon-") as tmp_name:
        tmp = Path(tmp_name)
        endpoints = [EmbeddedClickHouse(tmp / f"shard{i}") for i in range(3)]
        try:
            for ch in endpoints:
                ch.start()
            print(f"{args.rows:,} generated rows, {args.workers} workers, key {KEY}\n")
            if not args.skip_throughput:
                throughput(endpoints, tmp, args)
            if not args.skip_outage:
                print()
                outage(endpoints, tmp, args)
        finally:
            for ch in endpoints:
                ch.close()


if __name__ == "__main__":
    main()
