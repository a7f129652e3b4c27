"""Round trips of ClickHouse types, and numpy/pandas/arrow, through the endpoint."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client

NY = ZoneInfo("America/New_York")

# (column type, values to insert, values expected back (None: the same))
CASES: list[tuple[str, list[Any], list[Any] | None]] = [
    ("Int8", [-128, 0, 127], None),
    ("UInt64", [0, 2**64 - 1], None),
    ("Int128", [-(2**127), 2**127 - 1], None),
    ("Float32", [1.5, -0.25], None),
    ("Float64", [3.141592653589793, float("inf")], None),
    ("Decimal(18, 4)", [Decimal("12345.6789"), Decimal("-0.0001")], None),
    ("String", ["", "héllo", "tab\tnew\nline", "\x00bin"], None),
    ("FixedString(4)", [b"abcd", b"ab\x00\x00"], None),
    ("Date", [dt.date(1970, 1, 1), dt.date(2149, 6, 6)], None),
    ("Date32", [dt.date(1900, 1, 1), dt.date(2299, 12, 31)], None),
    (
        # clickhouse-connect returns UTC values naive (as against a real server)
        "DateTime('UTC')",
        [dt.datetime(2024, 2, 29, 12, 30, 45, tzinfo=dt.UTC)],
        [dt.datetime(2024, 2, 29, 12, 30, 45)],
    ),
    (
        "DateTime64(6, 'America/New_York')",
        [dt.datetime(2024, 7, 1, 8, 0, 0, 123456, tzinfo=NY)],
        None,
    ),
    ("UUID", [uuid.UUID("12345678-1234-5678-1234-567812345678")], None),
    ("IPv4", [IPv4Address("192.168.1.1")], None),
    ("IPv6", [IPv6Address("2001:db8::1")], None),
    ("Enum8('a' = 1, 'b' = 2)", ["a", "b"], None),
    ("Nullable(Int32)", [None, 5], None),
    ("LowCardinality(String)", ["x", "y", "x"], None),
    ("Array(Nullable(String))", [["a", None], []], None),
    ("Map(String, UInt16)", [{"k": 1, "j": 2}, {}], None),
    ("Tuple(a UInt8, b String)", [(1, "x")], [{"a": 1, "b": "x"}]),
    ("Array(Array(Int64))", [[[1, 2], [3]], []], None),
    ("Bool", [True, False], None),
]


@pytest.mark.parametrize(("ch_type", "values", "expected"), CASES, ids=[c[0] for c in CASES])
def test_round_trip(ch_client: Client, ch_type: str, values: list[Any], expected: Any) -> None:
    ch_client.command(f"CREATE TABLE rt (i UInt32, v {ch_type}) ENGINE = MergeTree ORDER BY i")
    ch_client.insert("rt", [[i, v] for i, v in enumerate(values)], column_names=["i", "v"])
    got = [row[0] for row in ch_client.query("SELECT v FROM rt ORDER BY i").result_rows]
    want = expected if expected is not None else values
    if ch_type.startswith("Tuple"):
        got = [dict(zip(("a", "b"), g, strict=True)) if isinstance(g, tuple) else g for g in got]
    assert got == want


def test_json_type(ch_client: Client) -> None:
    ch_client.command("CREATE TABLE j (i UInt8, doc JSON) ENGINE = MergeTree ORDER BY i")
    docs = [{"a": 1, "b": {"c": "x"}}, {"a": 2, "tags": ["p", "q"]}]
    ch_client.insert("j", [[i, d] for i, d in enumerate(docs)], column_names=["i", "doc"])
    assert ch_client.command("SELECT doc.b.c FROM j WHERE i = 0") == "x"
    assert ch_client.command("SELECT sum(doc.a::Int64) FROM j") == 3
    back = ch_client.query("SELECT doc FROM j ORDER BY i").result_rows
    assert back[0][0]["b"]["c"] == "x"
    assert back[1][0]["tags"] == ["p", "q"]


def test_numpy_insert_and_query(ch_client: Client) -> None:
    ch_client.command("CREATE TABLE n (a Int64, b Float64) ENGINE = MergeTree ORDER BY a")
    a = np.arange(10_000, dtype=np.int64)
    b = a.astype(np.float64) / 4
    ch_client.insert("n", [a, b], column_names=["a", "b"], column_oriented=True)
    arr = ch_client.query_np("SELECT a, b FROM n ORDER BY a")
    assert arr.shape == (10_000,)
    assert float(arr["b"].sum()) == float(b.sum())
    assert (arr["a"] == a).all()


def test_pandas_round_trip(ch_client: Client) -> None:
    ch_client.command(
        "CREATE TABLE p (id UInt32, name String, ts DateTime64(3, 'UTC'), x Nullable(Float64)) "
        "ENGINE = MergeTree ORDER BY id"
    )
    df = pd.DataFrame(
        {
            "id": np.arange(1000, dtype=np.uint32),
            "name": [f"n{i}" for i in range(1000)],
            "ts": pd.date_range("2024-01-01", periods=1000, freq="s", tz="UTC"),
            "x": [None if i % 7 == 0 else i / 2 for i in range(1000)],
        }
    )
    ch_client.insert_df("p", df)
    back = ch_client.query_df("SELECT * FROM p ORDER BY id")
    assert len(back) == 1000
    assert list(back["name"][:3]) == ["n0", "n1", "n2"]
    assert back["x"].isna().sum() == df["x"].isna().sum()
    assert back["ts"].iloc[-1] == df["ts"].iloc[-1].tz_localize(None)


def test_arrow_round_trip(ch_client: Client) -> None:
    ch_client.command("CREATE TABLE ar (k UInt64, s String) ENGINE = MergeTree ORDER BY k")
    table = pa.table({"k": pa.array(range(5000), pa.uint64()), "s": [f"v{i}" for i in range(5000)]})
    ch_client.insert_arrow("ar", table)
    back = ch_client.query_arrow("SELECT k, s FROM ar ORDER BY k")
    assert back.num_rows == 5000
    assert back.column("s")[4999].as_py() == "v4999"
    assert sum(back.column("k").to_pylist()) == sum(range(5000))
