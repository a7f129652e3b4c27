"""Rows inserted into a table with materialized views are the table's rows.

Before: a confirmed insert was counted by ClickHouse's summary, whose ``written_rows``
also counts the rows the table's materialized views wrote into their targets
(ClickHouse issue 18237; a server does it as the embedded engine does). A user trial
of ``chworkers run`` on a 5,000-line file into a table with two views printed
"inserted 10,035 rows", ``chworkers_rows_inserted_total{table="events"}`` said 10,035,
and ``insert_raw`` of 100 rows resolved to 103.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry

from chworkers import Supervisor

ROWS = 100


def _body(start: int, stop: int) -> bytes:
    return b"".join(
        json.dumps({"id": i, "user": f"u{i % 3}"}).encode() + b"\n" for i in range(start, stop)
    )


def _inserted(registry: CollectorRegistry, table: str) -> float | None:
    return registry.get_sample_value("chworkers_rows_inserted_total", {"table": table})


def test_rows_of_materialized_views_are_not_counted_as_the_tables(
    endpoint: Any, database: str, ch_client: Any
) -> None:
    ch_client.command(
        "CREATE TABLE ev (id UInt64, user String) ENGINE = MergeTree ORDER BY id "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    ch_client.command(
        "CREATE TABLE per_user (user String, n UInt64) ENGINE = MergeTree ORDER BY user"
    )
    ch_client.command("CREATE TABLE copy (id UInt64) ENGINE = MergeTree ORDER BY id")
    ch_client.command(
        "CREATE MATERIALIZED VIEW mv_users TO per_user AS "
        "SELECT user, count() AS n FROM ev GROUP BY user"
    )
    ch_client.command("CREATE MATERIALIZED VIEW mv_copy TO copy AS SELECT id FROM ev")
    registry = CollectorRegistry()
    with Supervisor(f"{endpoint.url}/{database}", workers=1, registry=registry) as sup:
        # A raw batch whose rows are known, as the daemon sends its batches.
        assert sup.insert_raw("ev", _body(0, ROWS), "JSONEachRow", rows=ROWS).result(60) == ROWS
        # Rows from Python.
        rows = [(i, f"u{i % 3}") for i in range(ROWS, 2 * ROWS)]
        assert sup.insert("ev", rows, column_names=["id", "user"]).result(60) == ROWS
        # The daemon's path: bad rows bisected out, the rest counted.
        bad = b'{"id": "not a number", "user": "x"}\n'
        body = _body(2 * ROWS, 3 * ROWS) + bad
        result = sup.insert_raw(
            "ev", body, "JSONEachRow", rows=ROWS + 1, split_bad_rows=True
        ).result(60)
        assert (result.rows, len(result.rejected)) == (ROWS, 1)
        assert _inserted(registry, "ev") == 3 * ROWS
    # What the views wrote is in their targets, and not counted as ev's rows.
    assert ch_client.command("SELECT count() FROM ev") == 3 * ROWS
    assert ch_client.command("SELECT count() FROM copy") == 3 * ROWS


def test_rows_unknown_to_the_caller_are_clickhouses_count(
    endpoint: Any, database: str, ch_client: Any
) -> None:
    ch_client.command("CREATE TABLE plain (id UInt64, user String) ENGINE = MergeTree ORDER BY id")
    registry = CollectorRegistry()
    with Supervisor(f"{endpoint.url}/{database}", workers=1, registry=registry) as sup:
        # No rows= given: ClickHouse's own count (no views here) is all there is.
        assert sup.insert_raw("plain", _body(0, ROWS), "JSONEachRow").result(60) == ROWS
        # input_format_allow_errors_num skips a bad row in ClickHouse: it wrote fewer
        # than were sent, and its count wins.
        body = _body(ROWS, 2 * ROWS - 1) + b'{"id": "x", "user": "y"}\n'
        written = sup.insert_raw(
            "plain",
            body,
            "JSONEachRow",
            rows=ROWS,
            settings={"input_format_allow_errors_num": 1},
        ).result(60)
        assert written == ROWS - 1
        assert _inserted(registry, "plain") == 2 * ROWS - 1
