"""What holds the embedded endpoint's memory over a long client run.

Runs phases of N requests each against one endpoint, the way a client's test suite
does, and prints the endpoint's RSS after each phase together with what chDB itself
accounts for (``system.metrics``: MemoryTracking and the caches' bytes) and how many databases and tables exist:

- ``select``: ``SELECT 1`` (each request opens and closes its own chDB connection);
- ``churn``: a database and a table created, a row inserted and read, the database
  dropped;
- ``keep``: the same without the drop (databases pile up, as in a test run that never
  cleans up);
- ``sessions``: ``SELECT 1`` in a new HTTP session each time (clickhouse-connect
  clients make a session each unless told not to; each keeps a chDB connection until
  ``session_timeout``, 60 s by default, after its last request);
- ``select-after``: ``SELECT 1`` again, to see whether the memory is given back.

Run: ``.venv/bin/python benchmarks/bench_embedded_memory.py [--requests N]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from chworkers.embedded import EmbeddedClickHouse

#: chDB's caches that grow with use (system.metrics; chDB has no asynchronous_metrics).
CACHES = (
    "MarkCacheBytes",
    "UncompressedCacheBytes",
    "QueryCacheBytes",
    "QueryConditionCacheBytes",
    "PrimaryIndexCacheBytes",
    "IndexMarkCacheBytes",
    "CompiledExpressionCacheBytes",
    "SerializationCacheBytesInMemoryAllocated",
    "PageCacheBytes",
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report(name: str, ch: EmbeddedClickHouse, client: Client, seconds: float) -> None:
    assert ch.pid is not None
    tracked = client.command("SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'")
    caches = client.query(
        "SELECT metric, value FROM system.metrics WHERE metric IN {m:Array(String)}",
        parameters={"m": list(CACHES)},
    ).result_rows
    cache_mb = sum(float(v) for _, v in caches) / 1e6
    databases = client.command("SELECT count() FROM system.databases")
    tables = client.command("SELECT count() FROM system.tables")
    print(
        f"{name:<14} RSS {rss_mb(ch.pid):7.1f} MB  chDB tracked {int(tracked) / 1e6:7.1f} MB  "
        f"caches {cache_mb:6.1f} MB  databases {databases:>6}  tables {tables:>6}  "
        f"{seconds:6.1f} s"
    )


def phase(n: int, step: Callable[[int], None]) -> float:
    started = time.perf_counter()
    for i in range(n):
        step(i)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="steps per phase")
    args = parser.parse_args()
    n = args.requests
    with tempfile.TemporaryDirectory() as tmp, EmbeddedClickHouse(Path(tmp) / "data") as ch:
        client = clickhouse_connect.get_client(
            host=ch.host, port=ch.port, autogenerate_session_id=False
        )
        report("start", ch, client, 0.0)

        def select(_: int) -> None:
            client.command("SELECT 1")

        def database_step(drop: bool) -> Callable[[int], None]:
            def step(_: int) -> None:
                name = f"db_{uuid.uuid4().hex[:12]}"
                client.command(f"CREATE DATABASE {name}")
                client.command(
                    f"CREATE TABLE {name}.t (a UInt64, s String) ENGINE = MergeTree ORDER BY a"
                )
                client.command(f"INSERT INTO {name}.t VALUES (1, 'x')")
                client.query(f"SELECT * FROM {name}.t")
                if drop:
                    client.command(f"DROP DATABASE {name} SYNC")

            return step

        report("select", ch, client, phase(n, select))
        report("churn", ch, client, phase(n, database_step(True)))
        report("keep", ch, client, phase(n, database_step(False)))

        def new_session(i: int) -> None:
            client.command("SELECT 1", settings={"session_id": f"bench-{i}-{uuid.uuid4()}"})

        report("sessions", ch, client, phase(n, new_session))
        report("select-after", ch, client, phase(n, select))
        client.close()


if __name__ == "__main__":
    main()
