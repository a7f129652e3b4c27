"""Regression test: an insert whose column expression throws is an error, not a 200.

chDB's streaming insert swallows whatever the table's sink chain throws once the data is
parsed: a ``DEFAULT`` computed for a column the insert leaves out, a ``MATERIALIZED`` or
``EPHEMERAL`` expression, a MergeTree key. ``v UInt8 MATERIALIZED throwIf(x > 5, 'bad')``
(code 395) answered 200 and lost every row: into a Memory table at any size (such a
table was never checked), into a MergeTree table once the body streamed (over 1 MiB: the
check after the insert took only codes 190/243/252/469 and views' errors for its own). A
ClickHouse server answers the error and writes nothing; so does the endpoint now.

An error is the insert's when ``system.errors`` names the insert's query id for it
(:mod:`chworkers.embedded.swallowed`), so another query's error of the same code while
a streamed insert runs does not fail it; two of them leave the endpoint unsure, and it
answers an error, whose retry with the same deduplication token is dropped.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ServerError

pytestmark = pytest.mark.timeout(240)

#: Above the endpoint's 1 MiB: such a body is streamed into chDB, not read whole.
STREAMED_ROWS = 200_000
SMALL_ROWS = 100

ENGINES = {"Memory": "Memory", "MergeTree": "MergeTree ORDER BY x"}


def _body(rows: int, last: int) -> bytes:
    """TSV rows 0..rows-2 (which pass) and then ``last``."""
    return b"".join(b"%d\n" % i for i in range(rows - 1)) + b"%d\n" % last


@pytest.mark.parametrize("rows", [SMALL_ROWS, STREAMED_ROWS], ids=["small", "streamed"])
@pytest.mark.parametrize("kind", ["DEFAULT", "MATERIALIZED"])
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_throwing_expression_fails_the_insert(
    client_factory: Callable[..., Client], engine: str, kind: str, rows: int
) -> None:
    client = client_factory(compress=False)  # an uncompressed body: the streaming insert
    limit = rows + 10  # no row of the good bodies throws
    client.command(
        f"CREATE TABLE t (x UInt32, v UInt8 {kind} throwIf(x > {limit}, 'bad x')) "
        f"ENGINE = {ENGINES[engine]}"
    )
    good = _body(rows, 1)
    if rows == STREAMED_ROWS:
        assert len(good) > 1 << 20
    # Only the last row throws: all rows before it pass, and none of them is written.
    with pytest.raises(DatabaseError) as caught:
        client.raw_insert("t", ["x"], _body(rows, limit + 1), fmt="TSV")
    text = str(caught.value)
    assert "code: 395" in text and "bad x" in text, text
    assert client.command("SELECT count() FROM t") == 0
    # Every row throws.
    with pytest.raises(DatabaseError, match="bad x"):
        client.raw_insert(
            "t", ["x"], b"".join(b"%d\n" % (limit + 1 + i) for i in range(rows)), fmt="TSV"
        )
    assert client.command("SELECT count() FROM t") == 0
    # The next insert is not blamed for the old errors.
    client.raw_insert("t", ["x"], good, fmt="TSV")
    assert client.command("SELECT count() FROM t") == rows


def test_a_conversion_in_an_expression_fails_the_insert(ch_client: Client) -> None:
    """Any code the expression throws, not only 395: here CANNOT_PARSE_TEXT (6)."""
    ch_client.command(
        "CREATE TABLE conv (x UInt32, s String, v UInt8 MATERIALIZED toUInt8(s)) ENGINE = Memory"
    )
    with pytest.raises(DatabaseError, match=r"code: 6[.,]"):
        ch_client.raw_insert("conv", None, b"1\t7\n2\tabc\n", fmt="TSV")
    assert ch_client.command("SELECT count() FROM conv") == 0
    ch_client.raw_insert("conv", None, b"1\t7\n", fmt="TSV")
    assert ch_client.command("SELECT sum(v) FROM conv") == 7


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _streamed_insert_with_errors_meanwhile(
    endpoint: EmbeddedClickHouse,
    database: str,
    ch_client: Client,
    statement: str,
    body: bytes,
    failing: int,
) -> bytes:
    """POST ``statement`` with ``body`` chunked; while the insert runs (streamed, its
    body not yet complete), ``failing`` SELECTs fail with the code a throwing expression
    has (395). Returns the answer's status line and headers."""
    params = {"database": database, "query": statement}
    target = "/?" + urllib.parse.urlencode(params)
    # All but the last rows at once: more than the MiB the endpoint reads before it
    # decides to stream, so the insert starts in chDB and waits for the rest.
    half = body.rindex(b"\n", 0, len(body) - 64) + 1
    assert half > 1 << 20
    with socket.create_connection((endpoint.host, endpoint.port), timeout=60) as sock:
        sock.sendall(
            f"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + _chunk(body[:half])
        )

        def running() -> bool:
            return bool(
                ch_client.command(
                    "SELECT count() FROM system.processes WHERE query LIKE 'INSERT INTO %'"
                    " AND query NOT LIKE '%system.processes%'"
                )
            )

        wait_for(running, timeout=30.0)
        for _ in range(failing):
            with pytest.raises(DatabaseError, match="code: 395"):
                ch_client.command("SELECT throwIf(1, 'another query')")
        sock.sendall(_chunk(body[half:]) + b"0\r\n\r\n")
        answer = b""
        with contextlib.suppress(TimeoutError):
            while b"\r\n\r\n" not in answer:
                got = sock.recv(65536)
                if not got:
                    break
                answer += got
    return answer


def test_another_querys_error_meanwhile_is_not_the_inserts(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    ch_client.command(
        "CREATE TABLE fine (x UInt32, v UInt8 MATERIALIZED throwIf(x > 1000000, 'bad')) "
        "ENGINE = Memory"
    )
    body = _body(STREAMED_ROWS, 1)
    answer = _streamed_insert_with_errors_meanwhile(
        endpoint, database, ch_client, "INSERT INTO fine FORMAT TSV", body, failing=1
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert ch_client.command("SELECT count() FROM fine") == STREAMED_ROWS


def test_unsure_answers_an_error_and_the_retry_is_deduplicated(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    """Two errors of the code by another query while the insert ran: the endpoint cannot
    tell whether the insert's own came first, answers the error, and the client's retry
    with the same token writes nothing twice."""
    ch_client.command(
        "CREATE TABLE unsure (x UInt32, v UInt8 MATERIALIZED throwIf(x > 1000000, 'bad')) "
        "ENGINE = MergeTree ORDER BY x SETTINGS non_replicated_deduplication_window = 100"
    )
    body = _body(STREAMED_ROWS, 1)
    statement = "INSERT INTO unsure SETTINGS insert_deduplication_token = 'u1' FORMAT TSV"
    answer = _streamed_insert_with_errors_meanwhile(
        endpoint, database, ch_client, statement, body, failing=2
    )
    assert answer.startswith(b"HTTP/1.1 500"), answer
    assert b"X-ClickHouse-Exception-Code: 395" in answer, answer
    ch_client.raw_insert(
        "unsure", None, body, fmt="TSV", settings={"insert_deduplication_token": "u1"}
    )
    assert ch_client.command("SELECT count() FROM unsure") == STREAMED_ROWS


@pytest.mark.parametrize("rows", [SMALL_ROWS, 200_000], ids=["small", "streamed"])
def test_the_supervisor_reports_the_error_and_counts_no_rows(
    make_sup: Callable[..., Any],
    endpoint: EmbeddedClickHouse,
    database: str,
    ch_client: Client,
    rows: int,
) -> None:
    ch_client.command(
        "CREATE TABLE sup (x UInt64, v UInt8 MATERIALIZED throwIf(x = 7, 'seven')) ENGINE = Memory"
    )
    sup = make_sup(clickhouse=f"{endpoint.url}/{database}", workers=1)
    data = {"x": list(range(8, rows + 8))}
    data["x"][-1] = 7
    with pytest.raises(ServerError, match="seven"):
        sup.insert("sup", data).result(120)
    assert sup.registry.get_sample_value("chworkers_rows_inserted_total", {"table": "sup"}) in (
        None,
        0.0,
    )
    assert ch_client.command("SELECT count() FROM sup") == 0
    data["x"][-1] = 9
    assert sup.insert("sup", data).result(120) == rows
    assert sup.registry.get_sample_value("chworkers_rows_inserted_total", {"table": "sup"}) == rows


def test_harmless_defaults_are_not_checked(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    """A constant or ``now()`` default cannot throw, so a table with only those is not
    checked: a streamed insert into it is answered 200 even when the check would have
    been unsure (two errors of one code by another query while it ran), and pays no
    check. A throwing expression's table, in the same moment, is answered the error."""
    for table, extra in (("calm", ""), ("wary", ", w UInt8 DEFAULT throwIf(x > 1000000)")):
        ch_client.command(
            f"CREATE TABLE {table} (x UInt32, t DateTime DEFAULT now(), s String DEFAULT 'a', "
            f"n Int8 DEFAULT -1, e UInt8 EPHEMERAL, u UUID DEFAULT generateUUIDv4(){extra}) "
            "ENGINE = Memory"
        )
    body = _body(STREAMED_ROWS, 1)
    answer = _streamed_insert_with_errors_meanwhile(
        endpoint, database, ch_client, "INSERT INTO calm (x) FORMAT TSV", body, failing=2
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert ch_client.query("SELECT count(), min(s), min(n) FROM calm").result_rows == [
        (STREAMED_ROWS, "a", -1)
    ]
    answer = _streamed_insert_with_errors_meanwhile(
        endpoint, database, ch_client, "INSERT INTO wary (x) FORMAT TSV", body, failing=2
    )
    assert answer.startswith(b"HTTP/1.1 500"), answer
