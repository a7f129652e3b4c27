"""An INSERT that fails after progress headers went out is a failure, not a success.

clickhouse-connect asks for progress headers on every request
(``send_progress_in_http_headers=1``, one each ``http_headers_progress_interval_ms``).
ClickHouse sends the status line, 200, with the first one; an insert that fails later
can only write its exception into the body (ClickHouse issues #33205, #45381), which
neither our raw sender nor clickhouse-connect's insert read: the batch counted as
inserted and left the spool, its rows lost. Inserts now ask for no progress headers (the
error keeps its status) and a 200 whose body carries an exception is a failure.

The embedded endpoint answers as such a server does (chworkers.embedded.progress); the
interval is made 1 ms here so that any insert runs past it.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest
from chclients import make_client, unique_name
from clickhouse_connect.driver.exceptions import DatabaseError
from httpcall import call

from chworkers.clickhouse.connection import Connection
from chworkers.clickhouse.translate import translate_error
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ServerError

#: Over the endpoint's 1 MiB prefetch, so the insert streams; the bad row comes last.
GOOD_ROWS = 40_000


def _body() -> bytes:
    good = b"".join(b'{"id": %d, "s": "%s"}\n' % (i, b"x" * 20) for i in range(GOOD_ROWS))
    return good + b'{"id": "not a number", "s": "late"}\n'


@pytest.fixture
def table(endpoint: EmbeddedClickHouse, database: str) -> str:
    name = f"{database}.{unique_name('ev')}"
    admin = make_client(endpoint)
    admin.command(f"CREATE TABLE {name} (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
    admin.close()
    return name


def test_the_endpoint_answers_a_late_failure_with_200_and_the_error_in_the_body(
    endpoint: EmbeddedClickHouse, table: str
) -> None:
    query = quote(f"INSERT INTO {table} FORMAT JSONEachRow")
    target = f"/?query={query}&send_progress_in_http_headers=1&http_headers_progress_interval_ms=1"
    status, headers, body = call(endpoint, target, _body())
    assert status == 200, (status, body[:300])
    assert headers.get("X-ClickHouse-Progress") and not headers.get("X-ClickHouse-Exception-Code")
    tag = headers.get("X-ClickHouse-Exception-Tag")
    assert tag and body.startswith(b"__exception__\r\n" + tag.encode()), body[:300]
    assert b"Code: " in body and body.endswith(b"__exception__\r\n"), body[-300:]
    # Without progress headers the same failure keeps its status.
    status, headers, body = call(endpoint, f"/?query={query}", _body())
    assert status >= 400 and headers.get("X-ClickHouse-Exception-Code"), (status, body[:300])


def test_a_late_raw_insert_failure_raises(endpoint: EmbeddedClickHouse, table: str) -> None:
    conn = Connection({"url": endpoint.url, "settings": {"http_headers_progress_interval_ms": 1}})
    try:
        with pytest.raises(ServerError) as caught:
            conn.raw_insert(
                table, _body(), fmt="JSONEachRow", deduplication_token=str(uuid.uuid4())
            )
        assert caught.value.code is not None
    finally:
        conn.close()


def test_an_exception_in_a_200_body_is_a_failure(endpoint: EmbeddedClickHouse, table: str) -> None:
    """The second guard: a server that sends progress headers anyway (a proxy adding the
    setting, a user profile forcing it) still cannot make a failed insert a success."""
    conn = Connection(endpoint.url)
    try:
        conn.ping()
        sender = conn.raw_sender
        assert sender is not None
        forced = {"send_progress_in_http_headers": 1, "http_headers_progress_interval_ms": 1}
        with pytest.raises(DatabaseError) as caught:
            sender.send(table, None, _body(), fmt="JSONEachRow", settings=forced, compression=None)
        error = translate_error(caught.value)
        assert isinstance(error, ServerError) and error.code == 27, error
    finally:
        conn.close()


def test_a_late_failure_of_clickhouse_connects_insert_raises(
    endpoint: EmbeddedClickHouse, database: str
) -> None:
    """``Connection.insert`` (clickhouse-connect's Native insert, lz4) the same way: a
    CONSTRAINT the last row breaks fails the insert after the progress interval."""
    table = f"{database}.{unique_name('ck')}"
    admin = make_client(endpoint)
    admin.command(
        f"CREATE TABLE {table} (id UInt64, CONSTRAINT small CHECK id < {GOOD_ROWS}) "
        "ENGINE = MergeTree ORDER BY id"
    )
    admin.close()
    conn = Connection(endpoint.url)
    try:
        with pytest.raises(ServerError) as caught:
            conn.insert(
                table,
                [[i] for i in range(GOOD_ROWS + 1)],
                column_names=["id"],
                settings={"http_headers_progress_interval_ms": 1},
            )
        assert caught.value.code == 469, caught.value
    finally:
        conn.close()
    admin = make_client(endpoint)
    try:
        assert admin.command(f"SELECT count() FROM {table}") == 0
    finally:
        admin.close()
