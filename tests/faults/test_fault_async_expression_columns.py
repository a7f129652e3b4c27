"""Regression test: an asynchronous insert whose column expression throws was answered
as written.

Each entry of a flush is parsed into a temporary ``Memory`` table with the target's
columns, ``DEFAULT``, ``MATERIALIZED`` and ``EPHEMERAL`` expressions included, by chDB's
streaming insert, which swallows what such an expression throws
(:mod:`chworkers.embedded.swallowed`): the entry was counted written and none of its
rows reached the table, with no error, although the client waited for the flush
(``wait_for_async_insert=1``). The staging insert of a table with an expression that
may throw is now checked, and the entry fails with the expression's error.
"""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

pytestmark = pytest.mark.timeout(120)

_SETTINGS = {"async_insert": 1, "wait_for_async_insert": 1, "async_insert_busy_timeout_ms": 200}


@pytest.mark.parametrize("kind", ["DEFAULT", "MATERIALIZED"])
@pytest.mark.parametrize("engine", ["Memory", "MergeTree ORDER BY x"])
def test_a_throwing_expression_fails_the_waiting_client(
    ch_client: Client, engine: str, kind: str
) -> None:
    ch_client.command(
        f"CREATE TABLE a (x UInt32, v UInt8 {kind} throwIf(x > 5, 'bad x')) ENGINE = {engine}"
    )
    with pytest.raises(DatabaseError, match="bad x") as caught:
        ch_client.raw_insert("a", ["x"], b"1\n7\n", fmt="TSV", settings=_SETTINGS)
    assert "code: 395" in str(caught.value)
    assert ch_client.command("SELECT count() FROM a") == 0
    summary = ch_client.raw_insert("a", ["x"], b"1\n2\n", fmt="TSV", settings=_SETTINGS)
    assert int(summary.written_rows) == 2
    assert ch_client.command("SELECT count() FROM a") == 2
