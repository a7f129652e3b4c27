"""Regression test: a request's own settings cut short or refused the endpoint's check.

After a streaming insert into a checked table the endpoint reads ``system.errors`` (and
before it, which tables need that: ``system.tables``) on the request's connection, where
the request's settings are in effect. ``limit = 1`` cut the error counts to one row, so
an insert whose column expression threw was answered 200 with its rows lost;
``max_result_rows = 1`` or ``max_columns_to_read = 1`` refused an insert a ClickHouse
server takes (those limits are of a query's result and reads; an INSERT has neither);
``offset = 5`` answered it an internal error. The endpoint's own queries now say in
their SETTINGS clause that none of those apply to them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

pytestmark = pytest.mark.timeout(180)

ROWS = 200_000  # above 1 MiB of TSV: streamed, then checked

SETTINGS = [
    {"limit": 1},
    {"offset": 5},
    {"max_result_rows": 1},
    {"max_result_rows": 1, "result_overflow_mode": "break"},
    {"max_columns_to_read": 1},
    {"additional_result_filter": "code = 0"},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s))
def test_a_requests_settings_do_not_change_the_check(
    client_factory: Callable[..., Client], settings: dict[str, object]
) -> None:
    client = client_factory(compress=False)
    client.command(
        "CREATE TABLE s (x UInt32, v UInt8 MATERIALIZED throwIf(x = 1000000, 'bad x')) "
        "ENGINE = MergeTree ORDER BY x"
    )
    # system.errors has several rows: the one that matters need not come first.
    for failing in ("SELECT 1 +", "SELECT nosuchfunction()", "SELECT * FROM nosuchtable"):
        with pytest.raises(DatabaseError):
            client.command(failing)
    body = b"".join(b"%d\n" % i for i in range(ROWS))
    with pytest.raises(DatabaseError, match="bad x"):
        client.raw_insert("s", None, body + b"1000000\n", fmt="TSV", settings=settings)
    assert client.command("SELECT count() FROM s") == 0
    client.raw_insert("s", None, body, fmt="TSV", settings=settings)
    assert client.command("SELECT count() FROM s") == ROWS
