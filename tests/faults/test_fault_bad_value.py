"""Regression test: a row value clickhouse-connect cannot write names its column.

``Supervisor.insert`` of rows whose values a column's type does not take (an ISO string
for a ``DateTime`` column, a number for a ``LowCardinality(String)`` one) failed with
``RequestError: AttributeError: 'str' object has no attribute 'timestamp'``: what went
wrong, but neither where nor what to do. The :class:`RequestError` (not retried) now
names the table, the column and its type, and for timestamps how to send text.
"""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client

from chworkers import Supervisor
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import RequestError

pytestmark = pytest.mark.timeout(120)


def test_the_column_is_named(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    ch_client.command(
        "CREATE TABLE ev (i UInt32, ts Nullable(DateTime), tag LowCardinality(String)) "
        "ENGINE = MergeTree ORDER BY i"
    )
    with Supervisor(f"{endpoint.url}/{database}", workers=1) as sup:
        with pytest.raises(RequestError) as caught:
            sup.insert("ev", [(1, "2026-12-01T10:00:00Z", "a")], ["i", "ts", "tag"]).result(60)
        text = str(caught.value)
        assert caught.value.column == "ts"  # type: ignore[attr-defined]
        assert "column 'ts' (Nullable(DateTime))" in text and "best_effort" in text
        with pytest.raises(RequestError, match=r"column 'tag' \(LowCardinality\(String\)\)"):
            sup.insert("ev", [(2, None, 5)], ["i", "ts", "tag"]).result(60)
        assert sup.insert("ev", [(3, None, "ok")], ["i", "ts", "tag"]).result(60) == 1
    assert ch_client.command("SELECT groupArray(i) FROM ev") == "[3]"
