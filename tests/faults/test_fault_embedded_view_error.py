"""Regression test: an insert whose materialized view fails is not answered 200.

chDB's streaming insert swallowed the error a view threw while the insert pushed its
block through it (here the view's SELECT: ``throwIf``): the endpoint answered 200, the
table had the rows and the view's target did not, so the client (the daemon included)
never replayed the batch and the view stayed short for good. The endpoint now answers
the view's error, as a ClickHouse server does; the client's retry with the batch's token
is dropped by the table and reaches the view.
"""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError


def test_a_failing_view_fails_the_insert(ch_client: Client) -> None:
    ch_client.command(
        "CREATE TABLE src (k UInt64) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    ch_client.command("CREATE TABLE dst (k UInt64) ENGINE = MergeTree ORDER BY k")
    ch_client.command(
        "CREATE MATERIALIZED VIEW mv TO dst AS "
        "SELECT k + throwIf(k = 42 AND getSetting('max_threads') = 3, 'view refused 42') AS k "
        "FROM src"
    )
    token = {"insert_deduplication_token": "t42"}
    with pytest.raises(DatabaseError, match="while pushing to view") as caught:
        ch_client.raw_insert(
            "src", None, b'{"k":42}\n', fmt="JSONEachRow", settings={**token, "max_threads": 3}
        )
    assert "view refused 42" in str(caught.value)
    # The view works again: the retry (same token) is dropped by src and reaches dst.
    ch_client.raw_insert("src", None, b'{"k":42}\n', fmt="JSONEachRow", settings=token)
    ch_client.raw_insert("src", None, b'{"k":7}\n', fmt="JSONEachRow")  # not blamed after
    assert ch_client.command("SELECT count() FROM src") == 2
    assert ch_client.query("SELECT k FROM dst ORDER BY k").result_columns == [[7, 42]]
