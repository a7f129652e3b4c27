"""A flush whose insert fails after its parts are written: its inserts count as written.

A materialized view that throws fails the flush's insert after the table's parts are
committed (chDB, as ClickHouse, writes the table's part before it pushes the block to
its views). The flush's ids were forgotten as if nothing had been written: the
clients, answered with the view's error, retried with their tokens, and the table got
their rows a second time. Now a failed insert whose token chDB's log holds (the parts
are there) counts its entries as written, and a flush into several partitions that
failed between its parts writes the others first: the retries are dropped.
"""

from __future__ import annotations

import pytest
from chclients import unique_name
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

pytestmark = pytest.mark.timeout(120)

FAST = {
    "async_insert": 1,
    "async_insert_use_adaptive_busy_timeout": 0,
    "async_insert_busy_timeout_max_ms": 20,
    "wait_for_async_insert": 1,
}


@pytest.mark.parametrize("partitions", [1, 4])
def test_a_view_s_error_after_the_parts_does_not_let_retries_land_twice(
    ch_client: Client, partitions: int
) -> None:
    table = unique_name("fv")
    ch_client.command(
        f"CREATE TABLE {table} (k UInt64) ENGINE = MergeTree PARTITION BY k % {partitions} "
        "ORDER BY k SETTINGS non_replicated_deduplication_window = 100"
    )
    ch_client.command(
        f"CREATE MATERIALIZED VIEW {table}_mv ENGINE = MergeTree ORDER BY k "
        f"AS SELECT k, throwIf(k = 13, 'refused by the view') AS x FROM {table}"
    )
    body = b"".join(b'{"k":%d}\n' % k for k in range(10, 20))
    settings = {**FAST, "insert_deduplication_token": "view-1"}
    with pytest.raises(DatabaseError, match="refused by the view"):
        ch_client.raw_insert(table, None, body, settings=settings, fmt="JSONEachRow")
    assert ch_client.command(f"SELECT count() FROM {table}") == 10  # the parts were written
    # The client's retries, same token: dropped (as a server's table drops them).
    for _ in range(2):
        summary = ch_client.raw_insert(table, None, body, settings=settings, fmt="JSONEachRow")
        assert int(summary.written_rows) == 0
    assert ch_client.command(f"SELECT count() FROM {table}") == 10
