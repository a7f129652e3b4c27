"""KeyReader reads a record's key fields as ClickHouse stores them: checked record by
record against what ClickHouse itself stored from the same record."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client

from chworkers.daemon.keycolumns import Column
from chworkers.daemon.keyfields import KeyReader
from chworkers.errors import ConfigError, RecordKeyError

COLUMNS = [
    Column("u8", "UInt8"),
    Column("i32", "Int32"),
    Column("u64", "UInt64"),
    Column("i64", "Int64"),
    Column("s", "String"),
    Column("fs", "FixedString(4)"),
    Column("lc", "LowCardinality(String)"),
]
FIELDS = [c.name for c in COLUMNS]
SCHEMA = ", ".join(f"{c.name} {c.type}" for c in COLUMNS)

JSON_RECORDS = [
    '{"u8": 7, "i32": -5, "u64": 18446744073709551615, "i64": -9223372036854775808, "s": "abc", "fs": "ab", "lc": "x"}',
    '{"u8": 300, "i32": 2147483648, "u64": 18446744073709551616, "i64": 9223372036854775808}',
    '{"u8": "42", "i32": "-7", "u64": "+9", "i64": ""}',
    '{"u8": true, "i32": false}',
    '{"u8": null, "s": null}',
    "{}",
    '{"s": 42, "lc": 4.50}',
    '{"s": true, "lc": {"a": [1, 2]}}',
    '{"s": [1,2], "fs": "abcd"}',
    '{"s": "unicode \\u00e9\\u4e2d \\ud83d\\ude00", "lc": "tab\\there"}',
    '{"s": ""}',
    '{"u8": -1}',
    '{"u8": 4.0}',
    '{"u8": 1e2}',
    '{"u8": " 7"}',
    '{"fs": "abcde"}',
    '{"other": 1, "s": "after an unknown field"}',
    '  { "s" :  "spaces" , "u8" : 3 }  ',
    "[1, 2]",
    "not json",
]
CSV_RECORDS = [
    "7,-5,18446744073709551615,-9223372036854775808,abc,ab,x",
    "300,2147483648,18446744073709551616,9223372036854775808,,,",
    '"7","-7",+9,"",a""b,"a,b",""',
    " 7 , -5 ,1,2, a b ,ab, x ",
    '1,2,3,4," quoted spaces ","ab","l\nc"',
    "\\N,1,2,3,\\N,ab,x",
    ",,,,,,",
    '1,2,3,4,"say ""hi""",ab,x',
    "-1,1,1,1,a,a,a",
    "7.0,1,1,1,a,a,a",
    "1,2",
]
TSV_RECORDS = [
    "7\t-5\t18446744073709551615\t-9223372036854775808\tabc\tab\tx",
    "300\t2147483648\t18446744073709551616\t9223372036854775808\ta\\tb\\\\c\\nd\tab\tx",
    "7\t1\t1\t1\t\\N\tab\tx",
    "7\t1\t1\t1\t\\x41\\'q\tab\tx",
    "7\t1\t1\t1\t a \tab\tx",
    "-1\t1\t1\t1\ta\ta\ta",
    "1\t2",
]


def stored(client: Client, table: str, record: str, fmt: str) -> tuple[object, ...] | None:
    """What ClickHouse stores from ``record`` (None when it refuses it)."""
    client.command(f"TRUNCATE TABLE {table}")
    try:
        client.raw_insert(table, insert_block=(record + "\n").encode(), fmt=fmt)
    except Exception:
        return None
    rows = client.query(f"SELECT u8, i32, u64, i64, hex(s), hex(fs), hex(lc) FROM {table}")
    if not rows.result_rows:
        return None
    row = rows.result_rows[0]
    return (*row[:4], *(bytes.fromhex(v) for v in row[4:]))


@pytest.mark.parametrize(
    ("fmt", "records"),
    [("JSONEachRow", JSON_RECORDS), ("CSV", CSV_RECORDS), ("TSV", TSV_RECORDS)],
)
def test_key_fields_are_what_clickhouse_stores(
    ch_client: Client, fmt: str, records: list[str]
) -> None:
    ch_client.command(f"CREATE TABLE k ({SCHEMA}) ENGINE = MergeTree ORDER BY tuple()")
    reader = KeyReader(fmt, FIELDS, COLUMNS)
    checked = refused = 0
    for record in records:
        expected = stored(ch_client, "k", record, fmt)
        try:
            ours: tuple[object, ...] | None = reader.read((record + "\n").encode())
        except RecordKeyError:
            ours = None
        if expected is None:
            # ClickHouse refuses it: it goes to the dead letters either way.
            refused += ours is None
            continue
        if ours is None:
            pytest.fail(f"{fmt} {record!r}: ClickHouse stores {expected}, chworkers refused it")
        assert ours == expected, record
        checked += 1
    assert checked >= len(records) // 2
    assert refused >= 1


def test_with_names_reads_fields_by_the_header(ch_client: Client) -> None:
    reader = KeyReader("CSVWithNames", ["u64", "s"], COLUMNS, header=b'"s",u64,"other"\n')
    assert reader.read(b"abc,12,zz\n") == (12, b"abc")
    reader = KeyReader("TSVWithNames", ["u64"], COLUMNS, header=b"x\tu64\n")
    assert reader.read(b"abc\t13\n") == (13,)
    with pytest.raises(RecordKeyError, match="do not name"):
        KeyReader("TSVWithNames", ["u64"], COLUMNS, header=b"x\ty\n")


def test_unsupported_key_columns_are_named() -> None:
    with pytest.raises(ConfigError, match="column ts is DateTime"):
        KeyReader("JSONEachRow", ["ts"], [Column("ts", "DateTime")])
    with pytest.raises(ConfigError, match="does not have"):
        KeyReader("JSONEachRow", ["nope"], COLUMNS)


def test_defaults_and_nulls_that_clickhouse_computes_are_refused() -> None:
    columns = [Column("a", "UInt64", "DEFAULT"), Column("b", "Nullable(UInt64)")]
    reader = KeyReader("JSONEachRow", ["a", "b"], columns)
    assert reader.read(b'{"a": 1, "b": 2}') == (1, 2)
    with pytest.raises(RecordKeyError, match="default is computed"):
        reader.read(b'{"b": 2}')
    with pytest.raises(RecordKeyError, match="NULL sharding key"):
        reader.read(b'{"a": 1, "b": null}')


def test_reading_a_batch_at_once_gives_what_reading_each_record_gives() -> None:
    reader = KeyReader("JSONEachRow", FIELDS, COLUMNS)
    records = [(r + "\n").encode() for r in JSON_RECORDS]

    def one_by_one(batch: list[bytes]) -> tuple[list[int], list[object]]:
        ok, values = [], []
        for i, record in enumerate(batch):
            try:
                values.append(reader.read(record))
            except RecordKeyError:
                continue
            ok.append(i)
        return ok, values

    valid = [r for i, r in enumerate(records) if i in one_by_one(records)[0]]
    for batch in (records, valid):  # with malformed records (each read alone), without
        indexes, values, failed = reader.read_all(batch)
        assert (indexes, values) == one_by_one(batch)
        assert sorted(indexes + [i for i, _ in failed]) == list(range(len(batch)))
