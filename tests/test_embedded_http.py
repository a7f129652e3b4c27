"""The endpoint at the HTTP level: framing, encodings, limits, bad requests, auth."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from typing import Any

import brotli
import clickhouse_connect
import lz4.frame
import pytest
import zstandard
from clickhouse_connect.driver.exceptions import DatabaseError
from httpcall import call

from chworkers.embedded import EmbeddedClickHouse

COMPRESS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "lz4": lz4.frame.compress,
}
DECOMPRESS = {
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "br": brotli.decompress,
    "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
    "lz4": lz4.frame.decompress,
}


def q(database: str, **params: str) -> str:
    return "/?" + urllib.parse.urlencode({"database": database, **params})


@pytest.fixture
def table(endpoint: EmbeddedClickHouse, database: str) -> str:
    status, _, body = call(
        endpoint, q(database), b"CREATE TABLE t (n UInt32, s String) ENGINE = MergeTree ORDER BY n"
    )
    assert status == 200, body
    return "t"


def count(endpoint: EmbeddedClickHouse, database: str) -> int:
    status, _, body = call(endpoint, q(database), b"SELECT count() FROM t")
    assert status == 200, body
    return int(body)


def csv_rows(start: int, stop: int) -> bytes:
    return b"".join(b"%d,row%d\n" % (i, i) for i in range(start, stop))


def test_query_in_url_continues_in_body(endpoint: EmbeddedClickHouse) -> None:
    status, _, body = call(endpoint, "/?query=SELECT%201%20%2B", b"41")
    assert (status, body) == (200, b"42\n")
    status, _, body = call(endpoint, "/?query=SELECT%2042", method="GET")
    assert (status, body) == (200, b"42\n")


def test_insert_data_in_url_and_body(
    endpoint: EmbeddedClickHouse, database: str, table: str
) -> None:
    target = q(database, query="INSERT INTO t FORMAT CSV")
    status, _, body = call(endpoint, target, csv_rows(0, 10))
    assert status == 200, body
    status, _, _ = call(endpoint, q(database), b"INSERT INTO t VALUES (100, 'v'), (101, 'w')")
    assert status == 200
    assert count(endpoint, database) == 12


def test_chunked_body(endpoint: EmbeddedClickHouse, database: str, table: str) -> None:
    def pieces() -> Iterator[bytes]:
        yield b"INSERT INTO t FO"
        yield b"RMAT CSV\n"
        for i in range(0, 3000, 100):
            yield csv_rows(i, i + 100)

    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
    conn.request("POST", q(database), body=pieces(), encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    conn.close()
    assert count(endpoint, database) == 3000


@pytest.mark.parametrize("encoding", sorted(COMPRESS))
def test_compressed_request_bodies_of_several_frames(
    endpoint: EmbeddedClickHouse, database: str, table: str, encoding: str
) -> None:
    compress = COMPRESS[encoding]
    target = q(database, query="INSERT INTO t FORMAT CSV")
    if encoding == "br":  # brotli streams cannot be concatenated
        body = compress(csv_rows(0, 2000))
    else:
        body = b"".join(compress(csv_rows(i, i + 500)) for i in range(0, 2000, 500))
    status, _, text = call(endpoint, target, body, {"Content-Encoding": encoding})
    assert status == 200, text
    assert count(endpoint, database) == 2000


@pytest.mark.parametrize("encoding", sorted(COMPRESS))
def test_compressed_responses(endpoint: EmbeddedClickHouse, encoding: str) -> None:
    target = "/?enable_http_compression=1"
    sql = b"SELECT number FROM numbers(100000)"
    status, headers, body = call(endpoint, target, sql, {"Accept-Encoding": encoding})
    assert status == 200
    assert headers["Content-Encoding"] == encoding
    expected = b"".join(b"%d\n" % i for i in range(100000))
    assert DECOMPRESS[encoding](body) == expected
    # Without enable_http_compression the response is plain, as in ClickHouse.
    _, headers, body = call(endpoint, "/", sql, {"Accept-Encoding": encoding})
    assert headers.get("Content-Encoding") is None
    assert body == expected


def test_broken_compression_is_refused_and_nothing_inserted(
    endpoint: EmbeddedClickHouse, database: str, table: str
) -> None:
    good = zstandard.ZstdCompressor().compress(csv_rows(0, 1000))
    broken = good[: len(good) // 2] + b"\xff" * 50 + good[len(good) // 2 :]
    target = q(database, query="INSERT INTO t FORMAT CSV")
    for body, enc in ((broken, "zstd"), (b"not gzip at all", "gzip"), (good[:-10], "zstd")):
        status, headers, text = call(endpoint, target, body, {"Content-Encoding": enc})
        assert status == 500, text
        assert headers["X-ClickHouse-Exception-Code"] == "271"
        assert b"CANNOT_DECOMPRESS" in text
    status, headers, text = call(endpoint, target, good, {"Content-Encoding": "snappy2"})
    assert headers["X-ClickHouse-Exception-Code"] == "89"
    assert count(endpoint, database) == 0


def test_bad_data_fails_the_whole_insert(
    endpoint: EmbeddedClickHouse, database: str, table: str
) -> None:
    body = csv_rows(0, 5000) + b"oops,not a number\n"
    status, _, text = call(endpoint, q(database, query="INSERT INTO t FORMAT CSV"), body)
    assert status in (400, 500)
    assert b"Code: " in text
    assert count(endpoint, database) == 0


def test_truncated_body_inserts_nothing(
    endpoint: EmbeddedClickHouse, database: str, table: str
) -> None:
    target = q(database, query="INSERT INTO t FORMAT CSV")
    data = csv_rows(0, 1000)
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
        head = f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data) + 500}\r\n\r\n"
        sock.sendall(head.encode() + data)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(65536)  # the endpoint answers or closes
    assert count(endpoint, database) == 0


def test_keep_alive_serves_many_requests_on_one_connection(endpoint: EmbeddedClickHouse) -> None:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
    try:
        for i in range(20):
            status, _, body = call(endpoint, "/", f"SELECT {i}".encode(), conn=conn)
            assert (status, body) == (200, f"{i}\n".encode())
        status, _, _ = call(endpoint, "/", b"SELECT * FROM nowhere", conn=conn)
        assert status == 404
        assert call(endpoint, "/", b"SELECT 7", conn=conn)[2] == b"7\n"
    finally:
        conn.close()


def test_long_url_works_and_huge_url_is_refused(endpoint: EmbeddedClickHouse) -> None:
    long_sql = "SELECT length('" + "x" * 200_000 + "')"
    status, _, body = call(endpoint, "/?" + urllib.parse.urlencode({"query": long_sql}), None)
    assert (status, body) == (200, b"200000\n")
    huge = "/?" + urllib.parse.urlencode({"query": "SELECT '" + "y" * 2_000_000 + "'"})
    status, headers, body = call(endpoint, huge, None)
    assert status == 400
    assert headers["X-ClickHouse-Exception-Code"] == "36"
    assert b"http_max_uri_size" in body
    assert call(endpoint, "/", b"SELECT 1")[2] == b"1\n"


def test_paths_and_methods(endpoint: EmbeddedClickHouse) -> None:
    status, _, body = call(endpoint, "/nowhere", None, method="GET")
    assert status == 404
    assert b"There is no handle /nowhere" in body
    status, headers, _ = call(endpoint, "/", b"SELECT 1", method="PUT")
    assert status == 405
    assert headers["X-ClickHouse-Exception-Code"] == "1"
    status, _, body = call(endpoint, "/", None, method="GET")
    assert (status, body) == (200, b"Ok.\n")


def test_get_is_read_only(endpoint: EmbeddedClickHouse, database: str) -> None:
    target = q(database, query="CREATE TABLE ro (a UInt8) ENGINE = Memory")
    _, headers, body = call(endpoint, target, None, method="GET")
    assert headers["X-ClickHouse-Exception-Code"] == "164"
    assert b"READONLY" in body


def test_malformed_http_gets_400_and_endpoint_keeps_serving(endpoint: EmbeddedClickHouse) -> None:
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    assert call(endpoint, "/", b"SELECT 1")[2] == b"1\n"


def test_chunked_insert_beyond_the_read_ahead_threshold(
    endpoint: EmbeddedClickHouse, database: str, table: str
) -> None:
    # A chunked body is read in the request's thread until it passes 1 MiB, then ahead
    # by a thread of its own: both halves arrive whole, and a failure after the switch
    # still inserts nothing.
    rows = csv_rows(0, 150_000)  # ~2.2 MB

    def pieces(data: bytes) -> Iterator[bytes]:
        yield b"INSERT INTO t FORMAT CSV\n"
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    for body, ok in ((rows[:2_000_000] + b"bad,row\n" + rows, False), (rows, True)):
        conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
        conn.request("POST", q(database), body=pieces(body), encode_chunked=True)
        resp = conn.getresponse()
        text = resp.read()
        conn.close()
        assert (resp.status == 200) is ok, text
        assert count(endpoint, database) == (150_000 if ok else 0)


def test_multipart_external_data_by_hand(endpoint: EmbeddedClickHouse) -> None:
    boundary = "XyZ"
    parts = [
        ("query", None, b"SELECT count(), sum(a) FROM ext WHERE b != {skip:String}"),
        ("param_skip", None, b"no"),
        ("ext_structure", None, b"a UInt32, b String"),
        ("ext_format", None, b"CSV"),
        ("ext", "ext.csv", b"1,yes\n2,no\n3,yes\n"),
    ]
    body = b""
    for name, filename, value in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, _, text = call(endpoint, "/", body, headers)
    assert (status, text) == (200, b"2\t4\n")


def test_form_urlencoded_body_is_query_text(endpoint: EmbeddedClickHouse) -> None:
    # ClickHouse reads only multipart/form-data bodies as forms (curl --data-binary sends
    # application/x-www-form-urlencoded with SQL in it).
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    target = "/?param_x=21"
    assert call(endpoint, target, b"SELECT {x:UInt8} * 2", headers)[:3:2] == (200, b"42\n")


def test_no_traceback_for_client_mistakes(endpoint: EmbeddedClickHouse) -> None:
    mistakes: list[tuple[str, Any, dict[str, str]]] = [
        ("/", b"SELEC 1", {}),
        ("/", b"SELECT * FROM nowhere", {}),
        ("/?query=INSERT%20INTO%20nowhere%20FORMAT%20CSV", b"1,2\n", {}),
        ("/", b"\x00\xff garbage", {"Content-Encoding": "lz4"}),
        ("/", b"SELECT 1", {"Content-Encoding": "nope"}),
        ("/?no_such_setting=1", b"SELECT 1", {}),
        ("/?session_id=s&session_timeout=-5", b"SELECT 1", {}),
        ("/?param_x=abc", b"SELECT {x:UInt8}", {}),
    ]
    for target, body, headers in mistakes:
        status, got, _ = call(endpoint, target, body, headers)
        assert status >= 400
        assert got["X-ClickHouse-Exception-Code"]
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
        sock.sendall(b"GET /" + b"x" * (2 << 20) + b" HTTP/1.1\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    assert call(endpoint, "/", b"SELECT 1")[2] == b"1\n"
    assert "Traceback" not in endpoint.log()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedClickHouse]:
    """An endpoint of its own that requires user alice with password s3cret."""
    ch = EmbeddedClickHouse(
        tmp_path_factory.mktemp("secured") / "data", user="alice", password="s3cret"
    )
    with ch:
        yield ch


class TestCredentials:
    def test_basic_auth_and_headers(self, secured: EmbeddedClickHouse) -> None:
        basic = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        assert call(secured, "/", b"SELECT 1", {"Authorization": basic})[2] == b"1\n"
        headers = {"X-ClickHouse-User": "alice", "X-ClickHouse-Key": "s3cret"}
        assert call(secured, "/", b"SELECT 2", headers)[2] == b"2\n"
        assert call(secured, "/?user=alice&password=s3cret", b"SELECT 3")[2] == b"3\n"

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()},
            {"X-ClickHouse-User": "bob", "X-ClickHouse-Key": "s3cret"},
        ],
    )
    def test_wrong_credentials_refused(
        self, secured: EmbeddedClickHouse, headers: dict[str, str]
    ) -> None:
        status, got, body = call(secured, "/", b"SELECT 1", headers)
        assert status == 403
        assert got["X-ClickHouse-Exception-Code"] == "516"
        assert b"AUTHENTICATION_FAILED" in body

    def test_clickhouse_connect(self, secured: EmbeddedClickHouse) -> None:
        client = clickhouse_connect.get_client(
            host=secured.host, port=secured.port, username="alice", password="s3cret"
        )
        assert client.command("SELECT 40 + 2") == 42
        client.close()
        with pytest.raises(DatabaseError) as info:
            clickhouse_connect.get_client(
                host=secured.host, port=secured.port, username="alice", password="bad"
            )
        assert "516" in str(info.value)
        # /ping needs no credentials, as in ClickHouse.
        assert call(secured, "/ping", None, method="GET")[2] == b"Ok.\n"


def test_multi_statements_are_refused(endpoint: EmbeddedClickHouse) -> None:
    status, headers, body = call(endpoint, "/", b"SELECT 1; SELECT 2")
    assert status == 400
    assert headers["X-ClickHouse-Exception-Code"] == "62"
    assert b"Multi-statements are not allowed" in body
    assert call(endpoint, "/", b"SELECT ';';")[2] == b";\n"


def test_database_and_format_from_headers(endpoint: EmbeddedClickHouse, database: str) -> None:
    headers = {"X-ClickHouse-Database": database, "X-ClickHouse-Format": "JSONEachRow"}
    status, got, body = call(endpoint, "/", b"SELECT currentDatabase() AS db", headers)
    assert status == 200
    assert body == f'{{"db":"{database}"}}\n'.encode()
    assert got["X-ClickHouse-Format"] == "JSONEachRow"


def test_same_query_id_twice_at_once_is_refused(endpoint: EmbeddedClickHouse) -> None:
    slow = threading.Thread(target=call, args=(endpoint, "/?query_id=dup", b"SELECT sleep(1)"))
    slow.start()
    time.sleep(0.3)
    _status, headers, body = call(endpoint, "/?query_id=dup", b"SELECT 1")
    slow.join()
    assert headers["X-ClickHouse-Exception-Code"] == "216"
    assert b"QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING" in body
    assert call(endpoint, "/?query_id=dup", b"SELECT 1")[:3:2] == (200, b"1\n")


def test_empty_insert_inserts_nothing(
    endpoint: EmbeddedClickHouse, database: str, table: str
) -> None:
    status, headers, _ = call(endpoint, q(database, query="INSERT INTO t FORMAT CSV"), b"")
    assert status == 200
    assert json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "0"
    assert count(endpoint, database) == 0


def test_insert_after_a_long_comment_in_small_chunks(
    endpoint: EmbeddedClickHouse, database: str, table: str
) -> None:
    body = b"/* " + b"x" * 5000 + b" */ -- note\nINSERT INTO t FORMAT CSV\n" + csv_rows(0, 100)
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
    conn.request("POST", q(database), body=iter(pieces), encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    conn.close()
    assert count(endpoint, database) == 100


def test_big_bodies_fail_whole_and_the_connection_goes_on(
    endpoint: EmbeddedClickHouse, database: str, table: str
) -> None:
    # Bodies over 1 MiB are read by a thread of their own while chDB parses.
    target = q(database, query="INSERT INTO t FORMAT CSV")
    big = csv_rows(0, 200_000)  # ~3 MB
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
    try:
        status, _, text = call(endpoint, target, big[:1000] + b"bad,row\n" + big, conn=conn)
        assert status in (400, 500)
        assert b"Code: " in text
        gz = gzip.compress(big)
        status, _, text = call(endpoint, target, gz[:-100], {"Content-Encoding": "gzip"}, conn=conn)
        assert b"CANNOT_DECOMPRESS" in text
        assert count(endpoint, database) == 0
        status, _, text = call(endpoint, target, big, conn=conn)
        assert status == 200, text
    finally:
        conn.close()
    assert count(endpoint, database) == 200_000
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
        head = f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(big) + 10}\r\n\r\n"
        sock.sendall(head.encode() + big)
        sock.shutdown(socket.SHUT_WR)  # ten bytes short
        sock.recv(65536)
    assert count(endpoint, database) == 200_000
