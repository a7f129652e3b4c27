"""The embedded endpoint through clickhouse-connect: queries, inserts, errors, sessions."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from clickhouse_connect.driver.external import ExternalData

from chworkers.embedded import EmbeddedClickHouse


def test_ping(endpoint: EmbeddedClickHouse) -> None:
    with urllib.request.urlopen(f"{endpoint.url}/ping", timeout=10) as resp:
        assert resp.status == 200
        assert resp.read() == b"Ok.\n"
    with urllib.request.urlopen(f"{endpoint.url}/", timeout=10) as resp:
        assert resp.read() == b"Ok.\n"


def test_select_and_server_info(ch_client: Client, database: str) -> None:
    assert ch_client.server_version.startswith("26.")
    assert ch_client.query("SELECT 1 AS x, 'a' AS y").result_rows == [(1, "a")]
    assert ch_client.command("SELECT currentDatabase()") == database


def test_insert_and_summary(ch_client: Client) -> None:
    ch_client.command("CREATE TABLE t (a UInt64, b String) ENGINE = MergeTree ORDER BY a")
    summary = ch_client.insert("t", [[i, f"s{i}"] for i in range(1000)], column_names=["a", "b"])
    assert summary.written_rows == 1000
    assert summary.written_bytes() > 0
    assert ch_client.query("SELECT count(), sum(a) FROM t").result_rows == [(1000, 499500)]


@pytest.mark.parametrize(
    ("sql", "code", "name"),
    [
        ("SELECT * FROM no_such_table", 60, "UNKNOWN_TABLE"),
        ("SELEC 1", 62, "SYNTAX_ERROR"),
        ("SELECT * FROM no_such_db.t", 81, "UNKNOWN_DATABASE"),
    ],
)
def test_errors_carry_clickhouse_codes(ch_client: Client, sql: str, code: int, name: str) -> None:
    with pytest.raises(DatabaseError) as info:
        ch_client.query(sql)
    assert f"Code: {code}." in str(info.value)
    assert name in str(info.value)


def test_query_parameters(ch_client: Client) -> None:
    result = ch_client.query(
        "SELECT {a:UInt32} + 1, {s:String}, {arr:Array(UInt8)}",
        parameters={"a": 41, "s": "it's", "arr": [1, 2]},
    )
    assert result.result_rows == [(42, "it's", [1, 2])]


def test_settings_apply_and_unknown_setting_fails(ch_client: Client) -> None:
    value = ch_client.command("SELECT getSetting('max_threads')", settings={"max_threads": 3})
    assert value == 3
    with pytest.raises(DatabaseError) as info:
        ch_client.raw_query("SELECT 1", settings={"no_such_setting_xyz": 1})
    assert "UNKNOWN_SETTING" in str(info.value)


def test_several_url_settings_apply_together(endpoint: EmbeddedClickHouse) -> None:
    # All of a request's URL settings go to chDB as one SET; an unknown one among them
    # fails the request and, in a session, leaves none of them behind.
    names = ("max_threads", "max_block_size", "insert_deduplicate")
    sql = b"SELECT " + b", ".join(b"getSetting('%s')" % n.encode() for n in names)
    sql += b" FORMAT TSV"
    params = {"max_threads": "3", "max_block_size": "1234", "insert_deduplicate": "0"}
    session = {"session_id": str(uuid.uuid4())}
    for extra in ({}, session):
        target = "/?" + urllib.parse.urlencode({**params, **extra})
        status, _, body = _http(endpoint, target, sql)
        assert (status, body) == (200, b"3\t1234\tfalse\n")
    before = _http(endpoint, "/?" + urllib.parse.urlencode(session), sql)[2]
    bad = {**session, "max_threads": "5", "no_such_setting_xyz": "1", "max_block_size": "99"}
    status, headers, body = _http(endpoint, "/?" + urllib.parse.urlencode(bad), sql)
    assert status == 404 and headers["X-ClickHouse-Exception-Code"] == "115", body
    assert b"no_such_setting_xyz" in body
    assert _http(endpoint, "/?" + urllib.parse.urlencode(session), sql)[2] == before
    readonly = _http(
        endpoint,
        "/?" + urllib.parse.urlencode({**params, "query": "SELECT getSetting('readonly')"}),
        method="GET",
    )
    assert readonly[2] == b"2\n"


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip", "br", False])
def test_each_compression(client_factory: Any, compress: Any) -> None:
    client = client_factory(compress=compress)
    client.command("CREATE TABLE IF NOT EXISTS c (n UInt64, s String) ENGINE = Memory")
    client.command("TRUNCATE TABLE c")
    rows = [[i, "x" * (i % 50)] for i in range(20_000)]
    client.insert("c", rows, column_names=["n", "s"])
    result = client.query("SELECT n, s FROM c ORDER BY n")
    assert result.result_rows == [tuple(r) for r in rows]


@pytest.mark.parametrize(
    ("sql", "status", "code"),
    [
        ("SELECT * FROM no_such_table", 404, "60"),
        ("SELEC 1", 400, "62"),
        ("SELECT throwIf(1)", 500, "395"),
    ],
)
def test_error_http_status_and_header(
    endpoint: EmbeddedClickHouse, sql: str, status: int, code: str
) -> None:
    got_status, headers, body = _http(endpoint, "/", sql.encode())
    assert got_status == status
    assert headers["X-ClickHouse-Exception-Code"] == code
    assert body.startswith(f"Code: {code}. DB::Exception: ".encode())
    assert body.endswith(b")\n")


def test_mid_stream_error_raises_in_client(ch_client: Client) -> None:
    sql = "SELECT number, throwIf(number = 300000) FROM numbers(1000000)"
    with pytest.raises(Exception) as info, ch_client.query_row_block_stream(sql) as stream:
        for _ in stream:
            pass
    assert "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO" in str(info.value)
    # Buffered queries (wait_end_of_query=1) get the error with a proper status.
    with pytest.raises(DatabaseError) as info2:
        ch_client.query(sql)
    assert info2.value.code == 395


def test_large_select_streams(ch_client: Client) -> None:
    total = 0
    rows = 0
    with ch_client.query_column_block_stream("SELECT number FROM numbers(3000000)") as stream:
        for block in stream:
            rows += len(block[0])
            total += sum(block[0])
    assert rows == 3_000_000
    assert total == 3_000_000 * 2_999_999 // 2


def test_session_keeps_set_and_temporary_tables(client_factory: Any) -> None:
    client = client_factory(session_id=f"s-{uuid.uuid4()}")
    client.command("SET max_threads = 3")
    client.command("CREATE TEMPORARY TABLE tmp (x UInt8)")
    client.command("INSERT INTO tmp VALUES (1), (2)")
    assert client.command("SELECT getSetting('max_threads')") == 3
    assert client.command("SELECT sum(x) FROM tmp") == 3
    # A URL setting applies to its query only, then the session's value is back.
    assert client.command("SELECT getSetting('max_threads')", settings={"max_threads": 5}) == 5
    assert client.command("SELECT getSetting('max_threads')") == 3
    other = client_factory(session_id=f"s-{uuid.uuid4()}")
    with pytest.raises(DatabaseError) as info:
        other.command("SELECT sum(x) FROM tmp")
    assert info.value.code == 60


def test_without_session_nothing_leaks(client_factory: Any) -> None:
    client = client_factory(autogenerate_session_id=False)
    client.command("SET max_threads = 3")
    assert client.command("SELECT getSetting('max_threads')") != 3


def test_concurrent_use_of_a_session_is_locked(endpoint: EmbeddedClickHouse, database: str) -> None:
    session = f"s-{uuid.uuid4()}"
    params = urllib.parse.urlencode({"session_id": session, "database": database})
    slow = threading.Thread(
        target=_http,
        args=(endpoint, f"/?{params}", b"SELECT sleep(1)"),
    )
    slow.start()
    time.sleep(0.3)
    status, headers, body = _http(endpoint, f"/?{params}", b"SELECT 1")
    slow.join()
    assert status == 500
    assert headers["X-ClickHouse-Exception-Code"] == "373"
    assert b"SESSION_IS_LOCKED" in body
    assert _http(endpoint, f"/?{params}", b"SELECT 1")[2] == b"1\n"


def test_session_check_and_bad_timeout(endpoint: EmbeddedClickHouse) -> None:
    _, headers, _ = _http(endpoint, "/?session_id=nope&session_check=1", b"SELECT 1")
    assert headers["X-ClickHouse-Exception-Code"] == "372"
    _, headers, _ = _http(endpoint, "/?session_id=x&session_timeout=abc", b"SELECT 1")
    assert headers["X-ClickHouse-Exception-Code"] == "374"


def test_external_data(ch_client: Client) -> None:
    data = ExternalData(
        file_name="ext.csv", data=b"1,a\n2,b\n3,c\n", fmt="CSV", structure=["n UInt8", "s String"]
    )
    result = ch_client.query("SELECT sum(n), groupArray(s) FROM ext", external_data=data)
    assert result.result_rows == [(6, ["a", "b", "c"])]
    typed = ExternalData(file_name="t2", data=b"5\n7\n", fmt="TSV", types="UInt32")
    assert ch_client.query("SELECT sum(_1) FROM t2", external_data=typed).result_rows == [(12,)]


def test_form_encoded_query_params(client_factory: Any) -> None:
    client = client_factory(form_encode_query_params=True)
    result = client.query("SELECT {a:String} || {b:String}", parameters={"a": "x" * 10, "b": "y"})
    assert result.result_rows == [("x" * 10 + "y",)]


def test_response_headers(endpoint: EmbeddedClickHouse) -> None:
    status, headers, body = _http(
        endpoint, "/?query_id=my-query&default_format=JSONEachRow", b"SELECT 1 AS x"
    )
    assert status == 200
    assert body == b'{"x":1}\n'
    assert headers["X-ClickHouse-Query-Id"] == "my-query"
    assert headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert headers["X-ClickHouse-Timezone"]
    assert headers["X-ClickHouse-Server-Display-Name"]
    summary = json.loads(headers["X-ClickHouse-Summary"])
    assert set(summary) >= {"read_rows", "written_rows", "written_bytes", "elapsed_ns"}


def test_insert_summary_header_counts_rows(endpoint: EmbeddedClickHouse, database: str) -> None:
    q = urllib.parse.urlencode({"database": database})
    _http(endpoint, f"/?{q}", b"CREATE TABLE t (a UInt32, s String) ENGINE = Memory")
    body = b"INSERT INTO t FORMAT CSV\n" + b"".join(b"%d,x%d\n" % (i, i) for i in range(500))
    status, headers, _ = _http(endpoint, f"/?{q}", body)
    assert status == 200
    summary = json.loads(headers["X-ClickHouse-Summary"])
    assert summary["written_rows"] == "500"
    assert int(summary["written_bytes"]) > 0


def _http(
    endpoint: EmbeddedClickHouse,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def test_sessions_expire(endpoint: EmbeddedClickHouse) -> None:
    target = "/?session_id=" + str(uuid.uuid4()) + "&session_timeout=0.2"
    assert _http(endpoint, target, b"CREATE TEMPORARY TABLE gone (x UInt8)")[0] == 200
    assert _http(endpoint, target, b"EXISTS TEMPORARY TABLE gone")[2] == b"1\n"
    time.sleep(1.6)  # the endpoint sweeps expired sessions every second
    assert _http(endpoint, target, b"EXISTS TEMPORARY TABLE gone")[2] == b"0\n"


def test_back_to_back_session_requests_never_find_the_session_locked(
    endpoint: EmbeddedClickHouse,
) -> None:
    # The session is released before the response ends, so the client's next request
    # (sent the moment it has read the response) always finds it free.
    # Two keep-alive connections take turns, so a new request may be served by another
    # thread while the previous one is still winding down.
    target = f"/?session_id={uuid.uuid4()}"
    conns = [http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30) for _ in "ab"]
    try:
        for i in range(200):
            conn = conns[i % 2]
            conn.request("POST", target, body=f"SELECT {i}".encode())
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, f"{i}\n".encode())
    finally:
        for conn in conns:
            conn.close()


def test_clickhouse_connect_falls_back_to_revision_zero(ch_client: Client) -> None:
    assert ch_client.protocol_version == 0
    ch_client.command(
        "CREATE TABLE lc (k LowCardinality(String), t DateTime('Asia/Tokyo')) ENGINE = Memory"
    )
    ch_client.command("INSERT INTO lc VALUES ('a', 0), ('b', 86400)")
    df = ch_client.query_df("SELECT k, t FROM lc ORDER BY k")
    assert list(df["k"]) == ["a", "b"]
    # Revision 0 Native has no time zone in DateTime type names (ClickHouse's too), so
    # the instants are right but the column's zone is not reported.
    got = ch_client.query("SELECT t FROM lc ORDER BY k").result_columns[0]
    utc = [v if v.tzinfo else v.replace(tzinfo=UTC) for v in got]
    assert [int(v.timestamp()) for v in utc] == [0, 86400]


@pytest.mark.parametrize(
    ("statement", "code"),
    [
        ("SELECT count() FROM system.query_log", 60),  # UNKNOWN_TABLE: no query_log
        ("CREATE USER someone IDENTIFIED BY 'x'", 497),  # ACCESS_DENIED
        ("SHOW USERS", 497),
    ],
)
def test_what_chdb_lacks_fails_as_clickhouse_does(
    ch_client: Client, statement: str, code: int
) -> None:
    with pytest.raises(DatabaseError, match=f"code: {code}"):
        ch_client.command(statement)
