"""Asynchronous inserts' ids recorded by session 7's endpoint, read by an upgraded one.

Session 7's endpoint named an entry with a token ``token:<SHA-256 of the token>`` (one
id a line, in ``DIR/chworkers_async_dedup/<table UUID>.log``); session 8 named tokens as
chDB names a synchronous insert's (SipHash128, :mod:`chworkers.embedded.blockids`) and
looked only for that: across the upgrade, a retry of an insert session 7 had flushed
was written again, and so was a synchronous insert repeating its token.

The fixture ``fixtures/session7_async_dedup/<uuid>.log`` was written by session 7's
code itself (commit 370045c, ``chworkers.embedded.asyncdedup.AsyncDedup.record``): an
endpoint of that tree, ``CREATE TABLE t UUID '<uuid>' (k UInt64) ENGINE = MergeTree
ORDER BY k SETTINGS non_replicated_deduplication_window = 100``, an asynchronous insert
of ``{"k":1}`` ``{"k":2}`` with token ``session-7-batch`` and one of ``{"k":3}`` without
a token (JSONEachRow), then its file copied as it was.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from chclients import make_client

from chworkers import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)

FIXTURE = Path(__file__).parent / "fixtures" / "session7_async_dedup"
UUID = "5e7e7e7e-0007-4007-8007-000000000007"
FAST = {
    "async_insert": 1,
    "async_insert_use_adaptive_busy_timeout": 0,
    "async_insert_busy_timeout_max_ms": 20,
    "wait_for_async_insert": 1,
}


def test_session_7_s_ids_still_drop_the_inserts_they_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with EmbeddedClickHouse(data) as ch:
        client = make_client(ch)
        client.command(
            f"CREATE TABLE t UUID '{UUID}' (k UInt64) ENGINE = MergeTree ORDER BY k "
            "SETTINGS non_replicated_deduplication_window = 100"
        )
        client.command("INSERT INTO t VALUES (1), (2), (3)")  # what session 7 wrote
        ch.stop()
        # Session 7's ids, where session 7 kept them.
        (data / "chworkers_async_dedup").mkdir()
        shutil.copy(FIXTURE / f"{UUID}.log", data / "chworkers_async_dedup" / f"{UUID}.log")
        ch.start()
        client = make_client(ch)
        tokened = {**FAST, "insert_deduplication_token": "session-7-batch"}
        body = b'{"k":1}\n{"k":2}\n'
        # The client's retry across the upgrade: dropped.
        summary = client.raw_insert("t", None, body, settings=tokened, fmt="JSONEachRow")
        assert int(summary.written_rows) == 0
        assert client.command("SELECT count() FROM t") == 3
        # A synchronous insert with that token: dropped too (one block-id store).
        client.raw_insert(
            "t",
            None,
            body,
            settings={"insert_deduplication_token": "session-7-batch"},
            fmt="JSONEachRow",
        )
        assert client.command("SELECT count() FROM t") == 3
        # The insert without a token, sent again: dropped.
        summary = client.raw_insert("t", None, b'{"k":3}\n', settings=FAST, fmt="JSONEachRow")
        assert int(summary.written_rows) == 0
        assert client.command("SELECT count() FROM t") == 3
        # Other data still lands, and then counts under today's ids.
        other = {**FAST, "insert_deduplication_token": "session-9"}
        for expected in (1, 0):
            summary = client.raw_insert("t", None, b'{"k":4}\n', settings=other, fmt="JSONEachRow")
            assert int(summary.written_rows) == expected
        assert client.command("SELECT count() FROM t") == 4
