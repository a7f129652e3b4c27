"""``chworkers demo``: start the embedded ClickHouse, ingest an example, show the result.

The first thing a new user runs: it needs nothing but this package. It starts the
embedded endpoint (in a temporary directory unless ``--path`` is given), inserts
generated web events in batches through clickhouse-connect, the way a worker does,
and prints what it did and a query over the data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ConfigError

EPOCH = dt.datetime(1970, 1, 1)
EVENTS = ("view", "click", "add_to_cart", "purchase")
TABLE_SQL = """
CREATE TABLE IF NOT EXISTS demo.events (
    ts DateTime64(3, 'UTC'),
    user_id UInt32,
    event LowCardinality(String),
    url String,
    value Float64
) ENGINE = MergeTree ORDER BY (event, ts)
"""
REPORT_SQL = """
SELECT event, count() AS events, uniqExact(user_id) AS users, round(sum(value), 2) AS value
FROM demo.events GROUP BY event ORDER BY events DESC
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="start the embedded ClickHouse and run an example ingest",
        description=(
            "Start the embedded ClickHouse endpoint, insert generated events in batches "
            "through clickhouse-connect, print the insert rate and a query result, stop."
        ),
    )
    p.add_argument(
        "--path",
        type=Path,
        metavar="DIR",
        help="data directory to use and keep (default: a temporary one, removed after)",
    )
    p.add_argument("--rows", type=int, default=100_000, help="rows to insert (default: 100000)")
    p.add_argument(
        "--batch-size", type=int, default=10_000, help="rows per insert (default: 10000)"
    )
    p.add_argument("--port", type=int, default=0, help="endpoint port (default: a free one)")
    p.set_defaults(handler=run)


def generate(rows: int, seed: int = 42) -> Iterator[list[Any]]:
    """Deterministic example events: [ts_ms, user_id, event, url, value]."""
    rng = random.Random(seed)
    start_ms = 1_735_689_600_000  # 2025-01-01 UTC
    for i in range(rows):
        event = EVENTS[min(int(rng.expovariate(1.2)), len(EVENTS) - 1)]
        value = round(rng.uniform(5, 200), 2) if event == "purchase" else 0.0
        url = f"https://shop.example/p/{rng.randrange(500)}"
        yield [start_ms + i * 37, rng.randrange(1, 5_000), event, url, value]


@contextmanager
def _data_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="chworkers-demo-") as tmp:
        yield Path(tmp)


def _check(args: argparse.Namespace) -> None:
    for key, minimum in (("rows", 1), ("batch_size", 1)):
        value = getattr(args, key)
        if value < minimum:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{flag} must be at least {minimum}, got {value}",
                key=key,
                value=value,
                expected=f"an integer >= {minimum}",
                source="flag",
            )


def _count(client: Any) -> int:
    return int(client.query("SELECT count() FROM demo.events").result_rows[0][0])


def run(args: argparse.Namespace) -> int:
    import clickhouse_connect

    _check(args)
    with _data_dir(args.path) as path, EmbeddedClickHouse(path, port=args.port) as ch:
        client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
        print(f"embedded ClickHouse {client.server_version} serving {ch.url}, data in {path}")
        client.command("CREATE DATABASE IF NOT EXISTS demo")
        client.command(TABLE_SQL)
        before = _count(client)
        columns = ["ts", "user_id", "event", "url", "value"]
        batch: list[list[Any]] = []
        batches = 0
        written = 0
        started = time.perf_counter()
        for row in generate(args.rows, seed=before):
            # Naive UTC: clickhouse-connect converts tz-aware values 4x slower.
            row[0] = EPOCH + dt.timedelta(milliseconds=row[0])
            batch.append(row)
            if len(batch) == args.batch_size:
                written += client.insert("demo.events", batch, column_names=columns).written_rows
                batches += 1
                batch = []
        if batch:
            written += client.insert("demo.events", batch, column_names=columns).written_rows
            batches += 1
        elapsed = time.perf_counter() - started
        print(
            f"inserted {written:,} rows in {batches} batches through clickhouse-connect "
            f"in {elapsed:.2f} s ({written / elapsed:,.0f} rows/s)"
        )
        result = client.query(REPORT_SQL)
        print("\n" + " ".join(f"{name:>12}" for name in result.column_names))
        for r in result.result_rows:
            print(" ".join(f"{v:>12}" for v in r))
        total = _count(client)
        print(f"\ndemo.events now holds {total:,} rows")
        client.close()
    where = f"kept in {args.path}" if args.path else "removed (use --path DIR to keep it)"
    print(f"stopped the endpoint; data {where}")
    return 0
