"""Raw inserts sent past clickhouse-connect's ``raw_insert`` (:class:`chworkers.clickhouse.driver.RawInsert`):
the same request, settings, answer and errors as through it, against the embedded endpoint."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faultproxy import FaultProxy

from chworkers import Connection, EmbeddedClickHouse
from chworkers.clickhouse import driver
from chworkers.errors import ConnectionLostError, ServerError

pytestmark = pytest.mark.timeout(60)

LINES = b'{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n'


@pytest.fixture
def conn(endpoint: EmbeddedClickHouse, database: str) -> Iterator[Connection]:
    with Connection(f"{endpoint.url}/{database}") as c:
        c.command(
            "CREATE TABLE t (a Int32, `b c` String DEFAULT 'none', b String) "
            "ENGINE = MergeTree ORDER BY a SETTINGS non_replicated_deduplication_window = 100"
        )
        yield c


def lean_and_plain(
    endpoint: EmbeddedClickHouse, database: str, monkeypatch: pytest.MonkeyPatch, query: str = ""
) -> tuple[Connection, Connection]:
    """A connection that sends raw inserts itself and one that leaves them to
    clickhouse-connect's ``raw_insert`` (as for a client RawInsert does not follow)."""
    url = f"{endpoint.url}/{database}{query}"
    lean = Connection(url)
    with monkeypatch.context() as patch:
        patch.setattr(driver.RawInsert, "of", classmethod(lambda cls, client, http: None))
        plain = Connection(url)
    assert lean.raw_sender is not None and plain.raw_sender is None
    return lean, plain


def test_a_raw_insert_goes_past_raw_insert_and_answers_the_same(
    endpoint: EmbeddedClickHouse, database: str, conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean, plain = lean_and_plain(endpoint, database, monkeypatch)
    with lean, plain:
        called: list[object] = []
        monkeypatch.setattr(lean.client, "raw_insert", lambda *a, **k: called.append(a))
        answers = [
            c.raw_insert("t", LINES, fmt="JSONEachRow", deduplication_token=f"tok-{n}")
            for n, c in enumerate((lean, plain))
        ]
        assert called == []
        for summary in answers:
            assert (summary.written_rows, summary.summary["query_id"] != "") == (2, True)
        assert answers[0].written_bytes() == answers[1].written_bytes()
        # The same token again: dropped by the server, as a replay must be.
        lean.raw_insert("t", LINES, fmt="JSONEachRow", deduplication_token="tok-1")
    assert conn.query("SELECT count() FROM t").result_rows == [(4,)]


def test_column_names_are_quoted_and_the_connections_settings_sent(
    endpoint: EmbeddedClickHouse, database: str, conn: Connection
) -> None:
    # A setting of the connection's URL (the client's own parameters) and one of the call.
    url = f"{endpoint.url}/{database}?input_format_skip_unknown_fields=1"
    with Connection(url) as c:
        assert c.raw_sender is not None
        body = b'{"a": 3, "b c": "q", "zz": 1}\n'
        c.raw_insert(
            "t", body, fmt="JSONEachRow", column_names=["a", "b c"], deduplication_token="q"
        )
        with pytest.raises(ServerError):
            c.raw_insert(
                "t",
                body,
                fmt="JSONEachRow",
                column_names=["a", "b c"],
                settings={"input_format_skip_unknown_fields": 0},
                deduplication_token="r",
            )
    assert conn.query("SELECT a, `b c`, b FROM t").result_rows == [(3, "q", "")]


def test_a_servers_error_is_the_same_as_through_raw_insert(
    endpoint: EmbeddedClickHouse, database: str, conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean, plain = lean_and_plain(endpoint, database, monkeypatch)
    errors: list[ServerError] = []
    with lean, plain:
        for c in (lean, plain):
            for table, body in (("t", b'{"a": "not a number"}\n'), ("missing", LINES)):
                with pytest.raises(ServerError) as caught:
                    c.raw_insert(table, body, fmt="JSONEachRow", deduplication_token="e")
                errors.append(caught.value)
    lean_errors, plain_errors = errors[:2], errors[2:]
    for ours, theirs in zip(lean_errors, plain_errors, strict=True):
        assert (ours.code, ours.name, ours.http_status) == (
            theirs.code,
            theirs.name,
            theirs.http_status,
        )
        assert ours.code is not None and ours.http_status is not None
        assert ours.idempotent and "token e" in (ours.query or "")


def test_a_lost_connection_is_told_and_the_next_insert_gets_a_new_one(
    fault_proxy: FaultProxy, database: str, conn: Connection
) -> None:
    with Connection(f"http://127.0.0.1:{fault_proxy.port}/{database}") as c:
        assert c.raw_sender is not None
        fault_proxy.set("drop", times=1, match=b"INSERT")
        with pytest.raises(ConnectionLostError) as caught:
            c.raw_insert("t", LINES, fmt="JSONEachRow", deduplication_token="d")
        assert caught.value.idempotent
        assert c.broken
        c.broken = False
        # The pool manager closed (clickhouse-connect does so when a connection is old):
        # the sender takes the new pool instead of the closed one.
        c.client.http.clear()
        c.raw_insert("t", LINES, fmt="JSONEachRow", deduplication_token="d")
    assert conn.query("SELECT count() FROM t").result_rows == [(2,)]
