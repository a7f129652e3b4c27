"""ConnectionConfig parsing, and Connection against the embedded endpoint with real faults."""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from faultproxy import FaultProxy

from chworkers import Connection, ConnectionConfig, EmbeddedClickHouse, Host
from chworkers.clickhouse.dedup import Batch, derive_token, normalize
from chworkers.clickhouse.retry import RetryPolicy
from chworkers.errors import (
    BatchError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    RequestError,
    ResponseTimeoutError,
    ServerError,
)

pytestmark = pytest.mark.timeout(60)


# -- configuration ----------------------------------------------------------------------------


def test_url_with_several_hosts_credentials_database_and_options() -> None:
    cfg = ConnectionConfig.from_url(
        "http://alice:p%40ss@h1:8123,h2,[::1]:9000/analytics"
        "?compress=lz4&connect_timeout=2.5&verify=false&max_threads=4"
    )
    assert cfg.hosts == (Host("h1", 8123), Host("h2", 8123), Host("::1", 9000))
    assert (cfg.username, cfg.password, cfg.database) == ("alice", "p@ss", "analytics")
    assert cfg.compress == "lz4" and cfg.connect_timeout == 2.5 and cfg.verify is False
    assert dict(cfg.settings) == {"max_threads": "4"}
    assert "p@ss" not in repr(cfg) and "p@ss" not in cfg.url
    assert ConnectionConfig.from_url("https://h").hosts == (Host("h", 8443),)


def test_mapping_forms() -> None:
    cfg = ConnectionConfig.coerce(
        {
            "host": ["a", "b:9"],
            "port": 8124,
            "user": "bob",
            "timeouts": {"connect": 1, "send_receive": 5},
            "settings": {"async_insert": 0},
        }
    )
    assert cfg.hosts == (Host("a", 8124), Host("b", 9))
    assert (cfg.username, cfg.connect_timeout, cfg.send_receive_timeout) == ("bob", 1.0, 5.0)
    base = ConnectionConfig.coerce({"url": "http://x:1/db", "database": "other"})
    assert base.hosts == (Host("x", 1),) and base.database == "other"
    assert ConnectionConfig.coerce(cfg) is cfg


@pytest.mark.parametrize(
    "bad, key",
    [
        ("ftp://h", "url"),
        ("http://h:99999", "port"),
        ("http://h:abc", "port"),
        ({"hots": ["h"]}, "hots"),
        ({"host": "h", "connect_timeout": -1}, "connect_timeout"),
        ({"host": "h", "compress": "snappy"}, "compress"),
        ({"host": "h", "secure": "maybe"}, "secure"),
        ({"hosts": []}, "hosts"),
    ],
)
def test_bad_connection_options_name_the_key(bad: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConnectionConfig.coerce(bad)  # type: ignore[arg-type]
    assert info.value.key == key
    assert key in str(info.value)


# -- batches and tokens -----------------------------------------------------------------------


def test_tokens_follow_content_not_identity() -> None:
    rows = [(1, "a"), (2, "b")]
    one = derive_token("db", "t", normalize(rows, None, False))
    assert one == derive_token("db", "t", normalize([(1, "a"), (2, "b")], None, False))
    assert one != derive_token("db", "t", normalize([(1, "a"), (2, "c")], None, False))
    assert one != derive_token("db", "u", normalize(rows, None, False))
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert derive_token(None, "t", normalize(df, None, False)) == derive_token(
        None, "t", normalize(df.copy(), None, False)
    )
    table = pa.table({"a": [1, 2]})
    assert derive_token(None, "t", normalize(table, None, False)) != derive_token(
        None, "t", normalize(pa.table({"a": [1, 3]}), None, False)
    )


def test_normalize_shapes() -> None:
    structured = np.array([(1, 2.5)], dtype=[("a", "i4"), ("b", "f8")])
    assert normalize(structured, None, False) == Batch("columns", [[1], [2.5]], ["a", "b"], True)
    assert normalize({"a": (1, 2)}, None, False) == Batch("columns", [[1, 2]], ["a"], True)
    assert normalize([{"a": 1, "b": 2}], None, False) == Batch("rows", [[1, 2]], ["a", "b"], False)
    with pytest.raises(BatchError, match="2-D"):
        normalize(np.arange(3), None, False)
    with pytest.raises(BatchError, match="cannot insert a int"):
        normalize(5, None, False)
    with pytest.raises(BatchError, match="no value for column 'b'"):
        normalize([{"a": 1, "b": 2}, {"a": 3}], None, False)


# -- against the endpoint ---------------------------------------------------------------------


@pytest.fixture
def conn(endpoint: EmbeddedClickHouse, database: str) -> Iterator[Connection]:
    c = Connection({"url": endpoint.url, "database": database})
    yield c
    c.close()


def test_query_command_ping(conn: Connection) -> None:
    assert conn.query("SELECT {x:Int32} + 1", parameters={"x": 41}).result_rows == [(42,)]
    assert conn.command("SELECT 7") == 7
    assert conn.ping() is True
    assert conn.query_df("SELECT 1 AS a")["a"].tolist() == [1]
    assert conn.query_arrow("SELECT 1 AS a").column("a").to_pylist() == [1]


def test_insert_every_shape(conn: Connection) -> None:
    conn.command("CREATE TABLE t (a Int32, b String) ENGINE = MergeTree ORDER BY a")
    conn.insert("t", [(1, "r")])
    conn.insert("t", [{"a": 2, "b": "d"}])
    conn.insert("t", [[3], ["c"]], ["a", "b"], column_oriented=True)
    conn.insert("t", {"a": [4], "b": ["m"]})
    conn.insert("t", np.array([(5, "s")], dtype=[("a", "i4"), ("b", "U4")]))
    conn.insert("t", pd.DataFrame({"a": [6], "b": ["p"]}))
    conn.insert("t", pa.table({"a": pa.array([7], pa.int32()), "b": ["w"]}))
    rows = conn.query("SELECT a, b FROM t ORDER BY a").result_rows
    assert rows == [(1, "r"), (2, "d"), (3, "c"), (4, "m"), (5, "s"), (6, "p"), (7, "w")]
    conn.command("CREATE TABLE m (a Int64, b Int64) ENGINE = MergeTree ORDER BY a")
    conn.insert("m", np.array([[1, 2], [3, 4]]))
    assert conn.query("SELECT a, b FROM m ORDER BY a").result_rows == [(1, 2), (3, 4)]


@pytest.mark.parametrize(("compress", "codec"), [("lz4", "lz4"), ("zstd", "zstd"), ("false", None)])
def test_rows_go_as_native_compressed_as_configured(
    endpoint: EmbeddedClickHouse, database: str, compress: str, codec: str | None
) -> None:
    with Connection(f"{endpoint.url}/{database}?compress={compress}") as c:
        c.command("CREATE TABLE c (a Int32, b String, t DateTime) ENGINE = MergeTree ORDER BY a")
        sent: list[object] = []
        sender = c.raw_sender
        assert sender is not None  # the request goes past clickhouse-connect's raw_insert
        send = sender.send

        def spy(*args: object, **kwargs: object) -> object:
            sent.append(kwargs.get("compression"))
            return send(*args, **kwargs)  # type: ignore[arg-type]

        sender.send = spy  # type: ignore[method-assign]
        when = dt.datetime(2024, 5, 6, 7, 8, 9)
        rows = [(i, f"r{i}" * (i % 7), when + dt.timedelta(seconds=i)) for i in range(5000)]
        assert c.insert("c", rows, ["a", "b", "t"]).written_rows == 5000
        assert sent == [codec]  # as Native, compressed as the connection says
        assert c.query("SELECT a, b, t FROM c ORDER BY a").result_rows == rows


def test_derived_tokens_deduplicate_with_a_window_and_warn_without(
    conn: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    conn.command(
        "CREATE TABLE dedup (a Int32) ENGINE = MergeTree ORDER BY a "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    conn.command("CREATE TABLE plain (a Int32) ENGINE = MergeTree ORDER BY a")
    with caplog.at_level(logging.WARNING, logger="chworkers.clickhouse.dedup"):
        for table in ("dedup", "plain"):
            for _ in range(3):
                conn.insert(table, [(1,), (2,)])
            conn.insert(table, [(3,)], deduplication_token="mine")
            conn.insert(table, [(4,)], deduplication_token="mine")  # same token: a repeat
    assert conn.command("SELECT count() FROM dedup") == 3
    assert conn.command("SELECT count() FROM plain") == 8
    warnings = [r for r in caplog.records if "does not deduplicate" in r.getMessage()]
    assert len(warnings) == 1 and ".plain" in warnings[0].getMessage()


def test_server_errors_carry_code_name_and_status(conn: Connection) -> None:
    with pytest.raises(ServerError) as info:
        conn.query("SELECT * FROM no_such_table")
    err = info.value
    assert (err.code, err.name, err.http_status) == (60, "UNKNOWN_TABLE", 404)
    assert err.endpoint == conn.endpoint and "no_such_table" in (err.query or "")
    assert err.__cause__ is not None
    with pytest.raises(ServerError) as syntax:
        conn.command("SELEC 1")
    assert syntax.value.code == 62 and not RetryPolicy().is_retryable(syntax.value)
    assert not conn.broken  # a server error leaves the connection usable
    assert conn.command("SELECT 1") == 1


def test_bad_data_is_a_request_error(conn: Connection) -> None:
    conn.command("CREATE TABLE t (a Int32) ENGINE = MergeTree ORDER BY a")
    with pytest.raises(RequestError, match="notint"):
        conn.insert("t", [("notint",)])


def test_refused_is_never_sent() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectError) as info:
        Connection(f"http://127.0.0.1:{port}")
    assert info.value.sent is False and info.value.endpoint == f"http://127.0.0.1:{port}"


def test_faults_through_the_proxy(fault_proxy: FaultProxy, database: str) -> None:
    conn = Connection({"url": fault_proxy.url, "database": database, "send_receive_timeout": 0.5})
    conn.command("CREATE TABLE t (a Int32) ENGINE = MergeTree ORDER BY a")
    fault_proxy.set("reset")
    with pytest.raises(ConnectionLostError) as lost:
        conn.insert("t", [(1,)])
    assert lost.value.sent is True and lost.value.idempotent is True
    assert conn.broken
    fault_proxy.set("delay", delay=1.5, times=1, match=b"sleep")
    conn2 = Connection({"url": fault_proxy.url, "database": database, "send_receive_timeout": 0.5})
    with pytest.raises(ResponseTimeoutError):
        conn2.command("SELECT sleep(0)", idempotent=False)
    conn3 = Connection({"url": fault_proxy.url, "database": database})
    fault_proxy.set("unavailable", times=1)
    with pytest.raises(ServerError) as unavailable:
        conn3.command("SELECT 1")
    assert unavailable.value.http_status == 503 and unavailable.value.code is None
    assert RetryPolicy().is_retryable(unavailable.value, idempotent=True)
    fault_proxy.set("refuse")
    with pytest.raises(ConnectError):
        Connection(fault_proxy.url)
    fault_proxy.set("pass")
    assert Connection(fault_proxy.url).command("SELECT 1") == 1
