"""Regression test: an insert that ClickHouse refuses with TOO_MANY_PARTS is not answered 200.

chDB's streaming insert swallows what the table's sink throws when the insert commits:
"Too many parts" (``parts_to_throw_insert``) and "Too many partitions for single INSERT
block" (``max_partitions_per_insert_block``), both code 252. The endpoint answered 200
(for the partitions case with the rows counted as written) and nothing was in the table:
a client, the daemon included, took lost rows for inserted ones.
"""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError


def _row(k: int, v: str) -> bytes:
    return b'{"k":%d,"v":"%s"}\n' % (k, v.encode())


def test_too_many_parts_is_an_error(ch_client: Client) -> None:
    ch_client.command(
        "CREATE TABLE t (k UInt32, v String) ENGINE = MergeTree ORDER BY tuple() "
        "SETTINGS parts_to_delay_insert = 2, parts_to_throw_insert = 3"
    )
    ch_client.command("SYSTEM STOP MERGES t")
    for i in range(3):
        ch_client.raw_insert("t", None, _row(1, f"a{i}"), fmt="JSONEachRow")
    with pytest.raises(DatabaseError, match="Too many parts") as caught:
        ch_client.raw_insert("t", None, _row(1, "lost"), fmt="JSONEachRow")
    assert "code: 252" in str(caught.value)
    assert ch_client.command("SELECT count() FROM t") == 3
    # Once merges have run, inserts succeed again, and are not blamed for the old error.
    ch_client.command("SYSTEM START MERGES t")
    ch_client.command("OPTIMIZE TABLE t FINAL")
    ch_client.raw_insert("t", None, _row(1, "after"), fmt="JSONEachRow")
    ch_client.command("CREATE TABLE u (k UInt32) ENGINE = MergeTree ORDER BY k")
    ch_client.raw_insert("u", None, b'{"k":1}\n', fmt="JSONEachRow")
    assert ch_client.command("SELECT count() FROM t") == 4
    assert ch_client.command("SELECT count() FROM u") == 1


def test_too_many_partitions_is_an_error(ch_client: Client) -> None:
    ch_client.command(
        "CREATE TABLE p (k UInt32, v String) ENGINE = MergeTree PARTITION BY k ORDER BY tuple()"
    )
    body = b"".join(_row(k, "x") for k in range(10))
    with pytest.raises(DatabaseError, match="Too many partitions"):
        ch_client.raw_insert(
            "p", None, body, fmt="JSONEachRow", settings={"max_partitions_per_insert_block": 3}
        )
    assert ch_client.command("SELECT count() FROM p") == 0
    ch_client.raw_insert(
        "p",
        None,
        body[: body.index(b"\n") + 1],
        fmt="JSONEachRow",
        settings={"max_partitions_per_insert_block": 3},
    )
    assert ch_client.command("SELECT count() FROM p") == 1
