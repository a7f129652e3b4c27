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

import uuid
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


@pytest.mark.parametrize("setting", ["offset = 1", "limit = 0, offset = 5", "max_result_rows = 0"])
def test_a_sessions_offset_does_not_break_its_later_requests(
    client_factory: Callable[..., Client], setting: str
) -> None:
    """The endpoint reads the session's current database and settings for itself: a
    session's ``SET offset = 1`` made every later request that carried a setting an
    internal error (``JSONDecodeError``)."""
    client = client_factory(session_id=f"offset-{uuid.uuid4()}")
    client.command("CREATE TABLE so (x UInt8) ENGINE = Memory")
    client.command(f"SET {setting}")
    # As a server: the offset applies to the SELECT's own rows.
    rows = client.query("SELECT number FROM numbers(3)", settings={"max_threads": 2})
    expected = [0, 1, 2][1 if "offset = 1" in setting else 5 if "offset = 5" in setting else 0 :]
    assert [r[0] for r in rows.result_rows] == expected
    client.raw_insert("so", None, b"1\n2\n", fmt="TSV", settings={"max_block_size": 1000})
    client.command("SET offset = 0")
    assert client.command("SELECT sum(x) FROM so") == 3
