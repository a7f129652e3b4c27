"""The embedded endpoint killed between a flush's part and its entries' recorded ids.

A flush of the asynchronous insert queue wrote its part, then appended its entries'
block ids to the table's file. Killed in between, the endpoint came back with the rows
but without their ids: the clients, never answered, retried with the same tokens and
their rows landed a second time. The ids are now written before the part, pending
under the flush's own deduplication token, and marked committed after; a pending flush
is resolved at the next start from chDB's own log of the table (it holds the flush's
token if and only if the part was committed). The kill is made exact by a test hook
(``CHWORKERS_EMBEDDED_TEST_CRASH_AFTER_FLUSH_PART``): the endpoint SIGKILLs itself right
after the part is written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chclients import make_client
from clickhouse_connect.driver.exceptions import ClickHouseError

from chworkers import EmbeddedClickHouse
from chworkers.embedded.asyncflush import CRASH_AFTER_PART_ENV

pytestmark = pytest.mark.timeout(120)

FAST = {
    "async_insert": 1,
    "async_insert_use_adaptive_busy_timeout": 0,
    "async_insert_busy_timeout_max_ms": 20,
    "wait_for_async_insert": 1,
}


def test_a_retry_after_a_kill_between_part_and_ids_lands_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CRASH_AFTER_PART_ENV, "1")
    with EmbeddedClickHouse(tmp_path / "data") as ch:
        monkeypatch.delenv(CRASH_AFTER_PART_ENV)  # only the first endpoint crashes
        client = make_client(ch)
        client.command(
            "CREATE TABLE t (k UInt64) ENGINE = MergeTree ORDER BY k "
            "SETTINGS non_replicated_deduplication_window = 100"
        )
        body = b'{"k":1}\n{"k":2}\n'
        settings = {**FAST, "insert_deduplication_token": "batch-1"}
        with pytest.raises(ClickHouseError):  # no answer: the endpoint is gone
            client.raw_insert("t", None, body, settings=settings, fmt="JSONEachRow")
        ch.restart()
        client = make_client(ch)
        assert client.command("SELECT count() FROM t") == 2  # the part was written
        # The client's retries, same token: dropped, as the flush's ids count.
        for _ in range(2):
            summary = client.raw_insert("t", None, body, settings=settings, fmt="JSONEachRow")
            assert int(summary.written_rows) == 0
        assert client.command("SELECT count() FROM t") == 2
        # Another token still lands.
        other = {**FAST, "insert_deduplication_token": "batch-2"}
        client.raw_insert("t", None, b'{"k":3}\n', settings=other, fmt="JSONEachRow")
        assert client.command("SELECT count() FROM t") == 3
