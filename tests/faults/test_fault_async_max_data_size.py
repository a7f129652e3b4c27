"""An asynchronous insert larger than ``async_insert_max_data_size`` was queued anyway
when its data came with its statement in the request's first piece.

The queue reads an insert's data whole before queuing it, and a larger one is written
synchronously, as a server does (then the table's own deduplication applies, not the
queue's per-entry one). The size was checked only as further pieces of the body
arrived: a body holding the statement and all of its data (``INSERT ... FORMAT X`` then
the rows, as curl sends it) was never measured, and went through the queue (flushed at
once, as a full batch). It is now measured from its first byte.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from chclients import unique_name
from clickhouse_connect.driver.client import Client
from httpcall import call

from chworkers import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)


def test_data_with_its_statement_over_the_limit_is_written_at_once(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    table = unique_name("amd")
    ch_client.command(f"CREATE TABLE {table} (k UInt64) ENGINE = MergeTree ORDER BY k")
    params = {
        "database": database,
        "async_insert": 1,
        "async_insert_use_adaptive_busy_timeout": 0,
        "async_insert_busy_timeout_max_ms": 60000,  # queued, it would wait a minute
        "wait_for_async_insert_timeout": 5,
        "async_insert_max_data_size": 16,
    }
    body = f"INSERT INTO {table} FORMAT JSONEachRow\n".encode() + b'{"k":1}\n{"k":2}\n{"k":3}\n'
    before = endpoint.stats()["async_inserts_total"]
    status, _, text = call(endpoint, "/?" + urlencode(params), body)
    assert status == 200, text
    assert ch_client.command(f"SELECT count() FROM {table}") == 3
    assert endpoint.stats()["async_inserts_total"] == before  # never queued
