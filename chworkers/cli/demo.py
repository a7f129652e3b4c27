"""`chworkers run --demo`: generated events into the embedded ClickHouse, and what the
table holds at the end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chworkers.daemon import config as config_module

__all__ = ["DEMO_TABLE", "demo_config", "print_result"]

DEMO_TABLE = "demo_events"


def demo_config(rows: int, overrides: Mapping[str, Any] | None = None) -> config_module.Config:
    """The demo's configuration: ``rows`` generated events into the embedded ClickHouse,
    state in ``./chworkers-demo``."""
    from chworkers.daemon.generator import GENERATOR_SCHEMA

    return config_module.load(
        overrides=overrides,
        data={
            "state_dir": "chworkers-demo",
            "metrics": {"port": 0},
            "spool": {"fsync": False},
            "pipelines": [
                {
                    "name": "demo",
                    "source": "generator",
                    "generator_count": rows,
                    "table": DEMO_TABLE,
                    "create": GENERATOR_SCHEMA,
                    "engine": "MergeTree ORDER BY (event, ts)",
                    "max_rows": 50_000,
                }
            ],
        },
    )


def print_result(daemon: Any) -> None:
    """What the demo's table holds, per event, and where /metrics was served (the
    daemon's ``before_stop``: the embedded ClickHouse still runs)."""
    from chworkers.clickhouse.pool import ConnectionPool

    pool = ConnectionPool(daemon.clickhouse_url, {"min_connections": 0, "max_connections": 1})
    try:
        result = pool.with_connection(
            lambda c: c.query(
                f"SELECT event, count() AS rows, round(avg(value), 2) AS avg_value "
                f"FROM {DEMO_TABLE} GROUP BY event ORDER BY event"
            )
        )
        total = pool.with_connection(
            lambda c: int(c.query(f"SELECT count() FROM {DEMO_TABLE}").result_rows[0][0])
        )
    finally:
        pool.close()
    print(f"\n{DEMO_TABLE} now holds {total:,} rows (state in {daemon.state_dir}):")
    print(f"  {'event':<10} {'rows':>10} {'avg(value)':>11}")
    for event, rows, avg in result.result_rows:
        print(f"  {event:<10} {rows:>10,} {avg:>11.2f}")
    print(f"metrics were served at {daemon.metrics_url}")
    print()
