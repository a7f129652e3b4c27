"""Regression test: an INSERT's X-ClickHouse-Summary says what it wrote as its result.

ClickHouse reports an INSERT's written rows and bytes as its ``result_rows`` and
``result_bytes`` too (as ``system.query_log`` does); the endpoint sent "0" for both.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest
from httpcall import call

from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.parametrize("streamed", [True, False])
def test_insert_summary_has_result_rows(
    endpoint: EmbeddedClickHouse, database: str, streamed: bool
) -> None:
    q = "/?" + urllib.parse.urlencode({"database": database})
    status, _, body = call(endpoint, q, b"CREATE TABLE t (a UInt32, s String) ENGINE = Memory")
    assert status == 200, body
    if streamed:
        target, body = (
            q,
            b"INSERT INTO t FORMAT CSV\n" + b"".join(b"%d,x%d\n" % (i, i) for i in range(300)),
        )
    else:  # VALUES with a query parameter runs as one query instead of streaming
        target = q + "&param_s=x"
        body = b"INSERT INTO t VALUES " + b",".join(b"(%d, {s:String})" % i for i in range(300))
    status, headers, body = call(endpoint, target, body)
    assert status == 200, body
    summary = json.loads(headers["X-ClickHouse-Summary"])
    assert summary["written_rows"] == summary["result_rows"] == "300"
    assert summary["result_bytes"] == summary["written_bytes"] != "0"
