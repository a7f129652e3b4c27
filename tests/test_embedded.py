"""The embedded endpoint through clickhouse-connect: queries, inserts, errors, sessions."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

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


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip", "br", False])
def test_each_compression(client_factory: Any, compress: Any) -> None:
    client = client_factory(compress=compress)
    client.command("CREATE TABLE IF NOT EXISTS c (n UInt64, s String) ENGINE = Memory")
    client.command("TRUNCATE TABLE c")
    rows = [[i, "x" * (i % 50)] for i in range(20_000)]
    client.insert("c", rows, column_names=["n", "s"])
    result = client.query("SELECT n, s FROM c ORDER BY n")
    assert result.result_rows == [tuple(r) for r in rows]
