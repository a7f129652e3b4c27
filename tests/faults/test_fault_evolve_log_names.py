"""The log line of columns added by schema evolution quotes a name that is no plain
identifier, as the ALTER does.

Before, in a user trial of issue 15, a record with a field `user id` was logged as
``table ev: added columns new_num Nullable(Int64), user id Nullable(String)``: "user id
Nullable(String)" reads as a column `user` of type "id Nullable(String)".
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from chworkers import ConnectionPool
from chworkers.clickhouse.schema import Evolve, evolve


def test_an_added_column_with_a_space_is_quoted_in_the_log(
    endpoint: Any, database: str, ch_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ch_client.command("CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n")
    data = b'{"n": 1, "new_num": 5, "user id": "u", "a`b": "x"}\n'
    pool = ConnectionPool(f"{endpoint.url}/{database}", {"max_connections": 1})
    try:
        with (
            caplog.at_level(logging.INFO, logger="chworkers.clickhouse.schema"),
            pool.connection() as conn,
        ):
            added = evolve(conn, "ev", data, Evolve())
    finally:
        pool.close()
    # What evolve returns is unchanged: the names as they came.
    assert sorted(added) == sorted(
        ["new_num Nullable(Int64)", "user id Nullable(String)", "a`b Nullable(String)"]
    )
    (line,) = [r.getMessage() for r in caplog.records if "added columns" in r.getMessage()]
    assert "new_num Nullable(Int64)" in line, line
    assert "`user id` Nullable(String)" in line, line
    assert "`a\\`b` Nullable(String)" in line, line
    columns = ch_client.query("SELECT name FROM system.columns WHERE table = 'ev'").result_rows
    assert {"user id", "a`b"} <= {row[0] for row in columns}
