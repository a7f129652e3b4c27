"""Regression tests: the embedded endpoint answers as ClickHouse does at the protocol level.

Each test here failed before its fix (issue 10): statements without a result got
``X-ClickHouse-Format`` (so clickhouse-connect's ``command()`` returned ``''`` instead of a
QuerySummary), curl's default ``application/x-www-form-urlencoded`` body was parsed as a
form instead of query text, and errors from streamed inserts carried ``(version ...)``
twice; CSVWithNames said header=absent.
"""

from __future__ import annotations

import subprocess
import urllib.parse

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.summary import QuerySummary
from httpcall import call

from chworkers.embedded import EmbeddedClickHouse

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_command_without_result_returns_a_summary(ch_client: Client) -> None:
    for statement in (
        "CREATE TABLE t (a UInt8) ENGINE = Memory",
        "INSERT INTO t VALUES (1), (2)",
        "SET max_threads = 1",
        "DROP TABLE t",
    ):
        got = ch_client.command(statement)
        assert isinstance(got, QuerySummary), (statement, got)
        assert got.query_id(), statement
    assert ch_client.command("SELECT 41 + 1") == 42
    assert ch_client.command("EXISTS TABLE t") == 0  # a result set, even if it is a zero


def test_no_format_header_without_a_result(endpoint: EmbeddedClickHouse, database: str) -> None:
    status, headers, body = call(
        endpoint, f"/?database={database}", b"CREATE TABLE h (a UInt8) ENGINE = Memory"
    )
    assert (status, body) == (200, b"")
    assert headers.get("X-ClickHouse-Format") is None
    status, headers, body = call(endpoint, f"/?database={database}", b"SELECT a FROM h")
    assert (status, body) == (200, b"")  # no rows, but a result set: the header is there
    assert headers["X-ClickHouse-Format"] == "TabSeparated"


def test_curl_default_content_type_is_query_text(
    endpoint: EmbeddedClickHouse, database: str
) -> None:
    # echo 'SELECT 1' | curl 'http://localhost:8123/' --data-binary @-
    assert call(endpoint, "/", b"SELECT 1", FORM)[::2] == (200, b"1\n")
    # A body that happens to look like a form is still SQL (which fails), as in ClickHouse.
    status, headers, _ = call(endpoint, "/", b"query=SELECT+1", FORM)
    assert status >= 400 and headers["X-ClickHouse-Exception-Code"]
    create = urllib.parse.quote("CREATE TABLE v (a UInt8, s String) ENGINE = Memory")
    assert call(endpoint, f"/?database={database}&query={create}", b"", FORM)[0] == 200
    insert = urllib.parse.quote("INSERT INTO v VALUES")
    status, _, body = call(
        endpoint, f"/?database={database}&query={insert}", b"(1,'a'),(2,'b')", FORM
    )
    assert (status, body) == (200, b"")
    status, _, body = call(endpoint, f"/?database={database}", b"SELECT * FROM v ORDER BY a", FORM)
    assert body == b"1\ta\n2\tb\n"


def test_real_curl_data_binary(endpoint: EmbeddedClickHouse) -> None:
    out = subprocess.run(
        ["curl", "-sS", f"{endpoint.url}/", "--data-binary", "@-"],
        input=b"SELECT 'curl', 1 + 1",
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert out.stdout == b"curl\t2\n"


def test_streamed_insert_error_names_the_version_once(
    endpoint: EmbeddedClickHouse, database: str
) -> None:
    create = urllib.parse.quote("CREATE TABLE e (a UInt8) ENGINE = Memory")
    assert call(endpoint, f"/?database={database}&query={create}", b"")[0] == 200
    insert = urllib.parse.quote("INSERT INTO e FORMAT CSV")
    status, headers, body = call(endpoint, f"/?database={database}&query={insert}", b"x,y\n")
    assert status == 400
    code = headers["X-ClickHouse-Exception-Code"]
    text = body.decode()
    assert text.startswith(f"Code: {code}. DB::Exception: "), text
    assert text.count("DB::Exception: ") == 1, text
    assert text.count("(version ") == 1, text
    assert text.rstrip("\n").endswith(")"), text


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("CSV", "text/csv; charset=UTF-8; header=absent"),
        ("CSVWithNames", "text/csv; charset=UTF-8; header=present"),
        ("TSVWithNames", "text/tab-separated-values; charset=UTF-8"),
        ("JSON", "application/json; charset=UTF-8"),
        ("Parquet", "application/octet-stream"),
        ("PrettyCompact", "text/plain; charset=UTF-8"),
    ],
)
def test_content_type_is_the_formats(
    endpoint: EmbeddedClickHouse, fmt: str, content_type: str
) -> None:
    status, headers, _ = call(endpoint, "/", f"SELECT 1 AS x FORMAT {fmt}".encode())
    assert (status, headers["Content-Type"]) == (200, content_type)
