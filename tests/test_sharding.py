"""Sharding keys and routing, proved against ClickHouse itself.

Keys are compared one by one with the embedded engine's evaluation of the same expression
over a table of the same types (edge cases included); routing is compared with the shard
a real ``Distributed`` table in chDB picks for each row (tests/chdistributed.py).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from chdistributed import distributed_shards
from clickhouse_connect.driver.client import Client

from chworkers.clickhouse.cluster import Cluster
from chworkers.clickhouse.sharding import ShardingKey, ShardRouter, shard_indexes
from chworkers.errors import BatchError, ConfigError

COLUMNS = {
    "i8": "Int8",
    "i16": "Int16",
    "i32": "Int32",
    "i64": "Int64",
    "u8": "UInt8",
    "u16": "UInt16",
    "u32": "UInt32",
    "u64": "UInt64",
    "s": "String",
    "lc": "LowCardinality(String)",
    "fs": "FixedString(5)",
}
STRINGS = ["", "a", "1234567", "12345678", "123456789", "ünïcødé 漢字 🙂", "x" * 300, "\x00"]
FIXED = ["", "a", "abcde", "ü", "\x00\x00"]


def _edge_rows(n: int) -> list[dict[str, Any]]:
    rng = random.Random(14)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"id": i}
        for name, type_name in COLUMNS.items():
            if type_name.startswith(("Int", "UInt")):
                bits = int(type_name.lstrip("UInt") or 0)
                signed = type_name.startswith("Int")
                lo, hi = (
                    (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
                )
                edges = [0, 1, lo, hi, lo + 1, hi - 1, -1 if signed else 2]
                row[name] = edges[i] if i < len(edges) else rng.randint(lo, hi)
            elif name == "fs":
                row[name] = (
                    FIXED[i]
                    if i < len(FIXED)
                    else "".join(rng.choice("ab€") for _ in range(rng.randint(0, 1)))
                )
            else:
                row[name] = (
                    STRINGS[i]
                    if i < len(STRINGS)
                    else "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 40)))
                )
        rows.append(row)
    return rows


ROWS = _edge_rows(200)
EXPRESSIONS = [
    *[name for name, t in COLUMNS.items() if "Int" in t],
    *[f"{fn}({name})" for fn in ("sipHash64", "cityHash64", "xxHash64") for name in COLUMNS],
    *[f"intHash64({name})" for name, t in COLUMNS.items() if "Int" in t],
    "sipHash64(s, u64)",
    "sipHash64(i8, fs, lc)",
    "sipHash64(`u32`, i64)",
    "cityHash64(s, i8, u64)",
    "xxHash64(fs, i16, lc)",
]


@pytest.fixture
def typed_table(ch_client: Client) -> str:
    ddl = ", ".join(f"{n} {t}" for n, t in COLUMNS.items())
    ch_client.command(f"CREATE TABLE keys (id UInt32, {ddl}) ENGINE = MergeTree ORDER BY id")
    names = ["id", *COLUMNS]
    ch_client.insert("keys", [[r[n] for n in names] for r in ROWS], column_names=names)
    return "keys"


def test_keys_equal_clickhouses_own_evaluation(ch_client: Client, typed_table: str) -> None:
    selected = ", ".join(f"toUInt64({e}) AS k{i}" for i, e in enumerate(EXPRESSIONS))
    result = ch_client.query(f"SELECT {selected} FROM {typed_table} ORDER BY id")
    assert result.row_count == len(ROWS)
    for i, expression in enumerate(EXPRESSIONS):
        bound = ShardingKey.parse(expression).bind(COLUMNS)
        ours = bound.evaluate_rows(ROWS).tolist()
        theirs = [row[i] for row in result.result_rows]
        if bound.key.function is None:  # plain signed keys: Distributed reads them unsigned
            width = int(COLUMNS[bound.fields[0]].lstrip("UInt")) // 8
            theirs = [v & ((1 << (8 * width)) - 1) for v in theirs]
        mismatch = [
            (ROWS[j], o, t) for j, (o, t) in enumerate(zip(ours, theirs, strict=True)) if o != t
        ]
        assert not mismatch, f"{expression}: {mismatch[:3]}"


@pytest.mark.parametrize(
    ("key", "weights"),
    [
        # Total weight 7: Int8 -1 read as 255 and as 2**64 - 1 land on different slots.
        ("i8", [1, 2, 4]),
        ("i32", [3, 4]),
        ("i64", [1, 1, 1]),
        ("u64", [3, 1]),
        ("sipHash64(s)", [1, 2, 3]),
        ("sipHash64(u32, s)", [2, 1, 1, 5]),
        ("intHash64(i32)", [1, 1, 1]),
        ("cityHash64(s, i8)", [1, 2, 4]),
        ("xxHash64(lc, u16)", [2, 3]),
    ],
)
def test_rows_go_where_a_distributed_table_sends_them(key: str, weights: list[int]) -> None:
    columns = "id UInt32, " + ", ".join(f"{n} {t}" for n, t in COLUMNS.items())
    per_shard = distributed_shards(columns, key, weights, ROWS)
    assert sum(len(rows) for rows in per_shard) == len(ROWS)
    theirs = {int(str(row["id"])): shard for shard, rows in enumerate(per_shard) for row in rows}
    bound = ShardingKey.parse(key).bind(COLUMNS)
    ours = shard_indexes(
        bound.evaluate_rows(ROWS), Cluster.parse([[f"h{i}"] for i in range(len(weights))], weights)
    )
    assert ours == [theirs[r["id"]] for r in ROWS]
    assert len(set(ours)) == len(weights)  # every shard got rows: the test can tell


def test_router_lays_weights_out_as_consecutive_slots_in_shard_order() -> None:
    router = ShardRouter([1, 2, 3])
    assert router.indexes(range(12)) == [0, 1, 1, 2, 2, 2] * 2
    top = np.array([2**64 - 1, 2**64 - 2], dtype=np.uint64)
    assert router.indexes(top) == [2, 1]  # 2**64 - 1 is 3 (mod 6), 2**64 - 2 is 2
    positions = router.split([5, 0, 1, 3, 2])
    assert [p.tolist() for p in positions] == [[1], [2, 4], [0, 3]]


def test_random_key_spreads_whole_batches_by_weight() -> None:
    key = ShardingKey.parse("rand()")
    assert key.is_random and key.fields == ()
    assert ShardingKey.parse("random").is_random
    router = ShardRouter([1, 3])
    rng = random.Random(1)
    picks = [router.random_shard(rng) for _ in range(4000)]
    assert 0.2 < picks.count(0) / 4000 < 0.3


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("murmurHash3_64(a)", "function murmurHash3_64 is not supported"),
        ("siphash64(a)", "ClickHouse spells it sipHash64"),
        ("cityhash64(a)", "ClickHouse spells it cityHash64"),
        ("a + b", "not a column name or a function call"),
        ("sipHash64(lower(a))", "arguments must be column names"),
        ("intHash64(a, b)", "intHash64 takes one argument"),
        ("sipHash64()", "arguments must be column names"),
    ],
)
def test_unsupported_expressions_are_refused_saying_what_is_supported(
    expression: str, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        ShardingKey.parse(expression)
    assert says in str(info.value)
    assert "supported: a plain integer column" in str(info.value)
    assert info.value.key == "sharding_key"


def test_binding_checks_columns_and_types() -> None:
    assert ShardingKey.parse("sipHash64(`user id`)").fields == ("user id",)
    with pytest.raises(ConfigError, match="no column 'uid'"):
        ShardingKey.parse("uid").bind({"user_id": "UInt64"})
    with pytest.raises(ConfigError, match="column 's' is String, not an integer type"):
        ShardingKey.parse("s").bind({"s": "String"})
    with pytest.raises(ConfigError, match=r"Nullable\(UInt64\), not an integer, String"):
        ShardingKey.parse("sipHash64(n)").bind({"n": "Nullable(UInt64)"})
    with pytest.raises(ConfigError, match="not an integer type"):
        ShardingKey.parse("intHash64(s)").bind({"s": "String"})


def test_bad_values_name_the_row_and_field() -> None:
    key = ShardingKey.parse("sipHash64(u, s)").bind({"u": "UInt8", "s": "FixedString(2)"})
    with pytest.raises(
        BatchError, match=r"row 1: sharding key field 'u' = 256 is out of range \[0, 255\]"
    ):
        key.evaluate([[1, 256], ["a", "b"]])
    with pytest.raises(BatchError, match="row 0: sharding key field 'u' = None is NULL"):
        key.evaluate([[None], ["a"]])
    with pytest.raises(
        BatchError, match="row 0: sharding key field 'u' = '7' is a str, not an integer"
    ):
        key.evaluate([["7"], ["a"]])
    with pytest.raises(
        BatchError, match="row 1: sharding key field 's' = 'abc' is 3 bytes, longer than 2"
    ):
        key.evaluate([[1, 2], ["a", "abc"]])
    with pytest.raises(BatchError, match="row 1: no value for the sharding key's field 's'"):
        key.evaluate_rows([{"u": 1, "s": "a"}, {"u": 2}])
    signed = ShardingKey.parse("i").bind({"i": "Int64"})
    with pytest.raises(BatchError, match="out of range"):
        signed.evaluate([[2**63]])


def test_ascii_and_unicode_batches_hash_alike(ch_client: Client) -> None:
    """sipHash64 encodes an all-ASCII batch as a whole, others value by value: both
    equal ClickHouse's, across the 8-byte word boundaries and past a chunk of rows."""
    rng = random.Random(5)
    ascii_values = ["", "a", "1234567", "12345678", "123456789", "x" * 300] + [
        "".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(0, 40))) for _ in range(20000)
    ]
    ch_client.command("CREATE TABLE strs (i UInt32, s String) ENGINE = MergeTree ORDER BY i")
    ch_client.insert("strs", list(enumerate(ascii_values)), column_names=["i", "s"])
    theirs = [r[0] for r in ch_client.query("SELECT sipHash64(s) FROM strs ORDER BY i").result_rows]
    key = ShardingKey.parse("sipHash64(s)").bind({"s": "String"})
    assert key.evaluate([ascii_values]).tolist() == theirs
    mixed = [*ascii_values[:-1], "ü"]  # one non-ASCII value: the batch goes value by value
    assert key.evaluate([mixed]).tolist()[:-1] == theirs[:-1]
