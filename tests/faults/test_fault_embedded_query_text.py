"""Regression tests: query text and parameters reach chDB as the client sent them.

Before the fix (issue 10, items 3 and 4) the endpoint decoded query text with
replacement, so ``SELECT hex('\\xff')`` returned ``EFBFBD``, binary binds and binary
``param_*`` values were corrupted the same way, and ``INSERT ... VALUES`` with
server-side parameters failed with UNKNOWN_QUERY_PARAMETER because chDB's streaming
insert takes no parameters.
"""

from __future__ import annotations

import urllib.parse

from clickhouse_connect.driver.client import Client
from httpcall import call

from chworkers.embedded import EmbeddedClickHouse


def _request(
    endpoint: EmbeddedClickHouse, target: str, body: bytes | None = None, method: str = "POST"
) -> tuple[int, bytes]:
    status, _, data = call(endpoint, target, body, method=method)
    return status, data


def test_binary_bytes_in_the_body_are_not_replaced(endpoint: EmbeddedClickHouse) -> None:
    assert _request(endpoint, "/", b"SELECT hex('\xff\xfe\x80')") == (200, b"FFFE80\n")


def test_binary_bytes_in_the_url_are_not_replaced(endpoint: EmbeddedClickHouse) -> None:
    query = urllib.parse.quote_from_bytes(b"SELECT hex('\xff'), hex({p:String})")
    param = urllib.parse.quote_from_bytes(b"\xc3\xa9\xff")  # UTF-8 'e-acute', then 0xFF
    got = _request(endpoint, f"/?query={query}&param_p={param}", method="GET")
    assert got == (200, b"FF\tC3A9FF\n")


def test_clickhouse_connect_binary_parameters(ch_client: Client) -> None:
    blob = bytes(range(256))
    got = ch_client.query("SELECT hex({b:String}) AS h", parameters={"b": blob}).result_rows
    assert got == [(blob.hex().upper(),)]
    # A binary bind: the bytes are spliced into the query text itself.
    got = ch_client.query("SELECT hex($b$) AS h", parameters={"$b$": b"\xff\x00\xfe"}).result_rows
    assert got == [("FF00FE",)]


def test_insert_values_with_server_side_parameters(ch_client: Client) -> None:
    ch_client.command("CREATE TABLE p (id UInt32, s String) ENGINE = Memory")
    summary = ch_client.command(
        "INSERT INTO p VALUES ({id:UInt32}, {s:String}), (2, 'two')",
        parameters={"id": 7, "s": b"\xffseven"},
    )
    assert summary.written_rows == 2
    rows = ch_client.query("SELECT id, hex(s) FROM p ORDER BY id").result_rows
    assert rows == [(2, b"two".hex().upper()), (7, b"\xffseven".hex().upper())]


def test_insert_with_a_parameter_in_the_statement(
    endpoint: EmbeddedClickHouse, database: str
) -> None:
    create = urllib.parse.quote("CREATE TABLE q (a UInt8, b String) ENGINE = Memory")
    assert _request(endpoint, f"/?database={database}&query={create}")[0] == 200
    insert = urllib.parse.quote("INSERT INTO {t:Identifier} FORMAT CSV")
    target = f"/?database={database}&query={insert}&param_t=q"
    assert _request(endpoint, target, b"1,a\n2,b\n") == (200, b"")
    got = _request(endpoint, f"/?database={database}", b"SELECT * FROM q ORDER BY a")
    assert got == (200, b"1\ta\n2\tb\n")
