"""The demo's table of averages keeps two decimals on every line.

`chworkers run --demo` printed `round(avg(value), 2)` as Python formats a float, so an
average that rounded to a whole number or one decimal lost its digits and its
alignment (`purchase  39,929  50.0` under `click  39,959  49.97`).
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from chclients import make_client

from chworkers.cli import demo
from chworkers.embedded import EmbeddedClickHouse


def test_every_average_has_two_decimals(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = make_client(endpoint, database=database)
    client.command(
        f"CREATE TABLE {demo.DEMO_TABLE} (event String, value Float64) "
        "ENGINE = MergeTree ORDER BY event"
    )
    client.insert(
        demo.DEMO_TABLE,
        [("click", 49.971), ("click", 49.971), ("view", 49.996), ("view", 50.004), ("x", 7.5)],
        column_names=["event", "value"],
    )
    client.close()
    daemon = types.SimpleNamespace(  # what the summary reads of the daemon
        clickhouse_url=f"{endpoint.url}/{database}",
        state_dir=tmp_path,
        metrics_url="http://127.0.0.1:1/metrics",
    )
    demo.print_result(daemon)
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith("  ") and "rows" not in line}
    assert rows["click"].endswith("  49.97"), lines
    assert rows["view"].endswith("  50.00"), lines
    assert rows["x"].endswith("   7.50"), lines
    assert len({len(line) for line in rows.values()}) == 1, lines  # aligned
