"""A re-send after ``ALTER TABLE ... DROP PARTITION`` was answered as written and dropped.

chDB's log of a table forgets the block ids of the parts a ``DROP PARTITION`` removes
(a synchronous insert with the same token lands again, as on a server), but the
asynchronous entries' ids, kept by the endpoint, stayed: an asynchronous re-send of the
dropped rows (a re-ingest with the same tokens) was answered with ``written_rows`` 0 and
written nowhere. The ids now keep the flush that wrote them, and after an ``ALTER``
that drops parts, the flushes whose parts are all gone lose theirs.
"""

from __future__ import annotations

import pytest
from chclients import unique_name
from clickhouse_connect.driver.client import Client

pytestmark = pytest.mark.timeout(120)

FAST = {
    "async_insert": 1,
    "async_insert_use_adaptive_busy_timeout": 0,
    "async_insert_busy_timeout_max_ms": 20,
}


def async_insert(client: Client, table: str, k: int, token: str) -> int:
    settings = {**FAST, "insert_deduplication_token": token}
    summary = client.raw_insert(
        table, None, b'{"k":%d}\n' % k, settings=settings, fmt="JSONEachRow"
    )
    return int(summary.written_rows)


def test_a_dropped_partition_takes_its_inserts_ids(ch_client: Client) -> None:
    table = unique_name("ad")
    ch_client.command(
        f"CREATE TABLE {table} (k UInt64) ENGINE = MergeTree ORDER BY k PARTITION BY k % 2 "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    assert async_insert(ch_client, table, 1, "odd") == 1
    assert async_insert(ch_client, table, 2, "even") == 1
    ch_client.command(f"ALTER TABLE {table} DROP PARTITION 1")
    # As chDB's own log forgets the dropped parts' ids: a re-send of "odd" lands again.
    assert async_insert(ch_client, table, 1, "odd") == 1
    assert async_insert(ch_client, table, 2, "even") == 0
    assert sorted(r[0] for r in ch_client.query(f"SELECT k FROM {table}").result_rows) == [1, 2]
