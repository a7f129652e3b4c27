"""Inserts whose data arrives whole within the first MiB: one chDB query over a pipe.

Everything that can go into ``INSERT ... FORMAT X`` still works (column lists, SETTINGS
clauses, table functions, VALUES, compressed and chunked bodies), errors the table
throws as the insert commits are raised without the ``system.errors`` check, and data
larger than the pipe (a small compressed body that decodes to megabytes) is written by
a thread that never outlives the query, whether chDB read it all or refused it.
"""

from __future__ import annotations

import http.client
import urllib.parse
from collections.abc import Iterator

import lz4.frame
import pytest
from httpcall import call

from chworkers.embedded import EmbeddedClickHouse, infile


def q(database: str, **params: str) -> str:
    return "/?" + urllib.parse.urlencode({"database": database, **params})


def run(endpoint: EmbeddedClickHouse, database: str, body: bytes, **params: str) -> bytes:
    status, _, text = call(endpoint, q(database, **params), body)
    assert status == 200, text
    return text


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ("INSERT INTO t", "INSERT INTO t @ FROM INFILE '/p' @ FORMAT TSV"),
        (
            "INSERT INTO TABLE db.t (a, b)",
            "INSERT INTO TABLE db.t (a, b) @ FROM INFILE '/p' @ FORMAT TSV",
        ),
        (
            "INSERT INTO `my t` SETTINGS async_insert = 0",
            "INSERT INTO `my t` @ FROM INFILE '/p' @ SETTINGS async_insert = 0 @ FORMAT TSV",
        ),
        (
            "INSERT INTO settings SETTINGS a=1",
            "INSERT INTO settings @ FROM INFILE '/p' @ SETTINGS a=1 @ FORMAT TSV",
        ),
        (
            "INSERT INTO FUNCTION file('x.tsv', 'TSV', 'a UInt8') (a)",
            "INSERT INTO FUNCTION file('x.tsv', 'TSV', 'a UInt8') (a) @ FROM INFILE '/p' @ FORMAT TSV",
        ),
        (
            "INSERT INTO t -- a comment",
            "INSERT INTO t -- a comment @ FROM INFILE '/p' @ FORMAT TSV",
        ),
        ("INSERT INTO FUNCTION file('x', 'TSV', 'a UInt8') PARTITION BY a", None),
        ("INSERT INTO (a)", None),
        ("INSERT INTO t (a", None),
    ],
)
def test_where_from_infile_goes(head: str, expected: str | None) -> None:
    got = infile.statement(head, "TSV", "/p")
    assert got == (None if expected is None else expected.replace(" @ ", "\n").encode())


def test_a_format_name_that_needs_quoting_is_streamed() -> None:
    assert infile.statement("INSERT INTO t", "Weird-Format", "/p") is None


def test_every_shape_of_small_insert_lands(endpoint: EmbeddedClickHouse, database: str) -> None:
    run(endpoint, database, b"CREATE TABLE t (a UInt32, b String) ENGINE = MergeTree ORDER BY a")
    run(endpoint, database, b"INSERT INTO t (b, a) FORMAT TSV\nx\t1\n")
    run(endpoint, database, b"INSERT INTO t SETTINGS max_insert_threads = 1 FORMAT CSV\n2,y\n")
    run(endpoint, database, b"INSERT INTO t VALUES (3, 'z'), (4, 'w')")
    run(endpoint, database, b"3\tv\n", query=f"INSERT INTO {database}.t FORMAT TSV")
    body = lz4.frame.compress(b"5\tc\n")
    status, headers, text = call(
        endpoint, q(database, query="INSERT INTO t FORMAT TSV"), body, {"Content-Encoding": "lz4"}
    )
    assert status == 200, text
    assert b'"written_rows":"1"' in headers["X-ClickHouse-Summary"].encode()
    assert run(endpoint, database, b"SELECT count(), sum(a) FROM t") == b"6\t18\n"


def test_data_larger_than_the_pipe(endpoint: EmbeddedClickHouse, database: str) -> None:
    # 60 KB of lz4 that decodes to ~9 MB: read whole, more than any pipe holds.
    run(endpoint, database, b"CREATE TABLE t (a UInt32, b String) ENGINE = MergeTree ORDER BY a")
    rows = b"".join(b"%d\t%s\n" % (i, b"x" * 80) for i in range(100_000))
    target = q(database, query="INSERT INTO t FORMAT TSV")
    status, _, text = call(endpoint, target, lz4.frame.compress(rows), {"Content-Encoding": "lz4"})
    assert status == 200, text
    # chDB stops reading at the bad row, long before the writer is done: both end.
    bad = rows + b"not a number\tx\n" + rows
    status, _, text = call(endpoint, target, lz4.frame.compress(bad), {"Content-Encoding": "lz4"})
    assert status in (400, 500) and b"Code: " in text, text
    assert run(endpoint, database, b"SELECT count() FROM t") == b"100000\n"


def test_small_chunked_body(endpoint: EmbeddedClickHouse, database: str) -> None:
    run(endpoint, database, b"CREATE TABLE t (a UInt32) ENGINE = MergeTree ORDER BY a")

    def pieces() -> Iterator[bytes]:
        yield b"INSERT INTO t FORMAT TSV\n"
        for i in range(100):
            yield b"%d\n" % i

    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
    try:
        conn.request("POST", q(database), body=pieces(), encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
    finally:
        conn.close()
    assert run(endpoint, database, b"SELECT count(), sum(a) FROM t") == b"100\t4950\n"


def test_a_large_body_that_the_table_refuses_is_still_an_error(
    endpoint: EmbeddedClickHouse, database: str
) -> None:
    # Over a MiB streams through chDB's streaming insert: the system.errors check answers.
    run(
        endpoint,
        database,
        b"CREATE TABLE p (k UInt32, v String) ENGINE = MergeTree PARTITION BY k ORDER BY tuple()",
    )
    body = b"".join(b"%d\t%s\n" % (i % 10, b"y" * 100) for i in range(20_000))
    assert len(body) > 1 << 20
    target = q(database, query="INSERT INTO p FORMAT TSV", max_partitions_per_insert_block="3")
    status, headers, text = call(endpoint, target, body)
    assert status == 500, text
    assert headers["X-ClickHouse-Exception-Code"] == "252"
    assert run(endpoint, database, b"SELECT count() FROM p") == b"0\n"
