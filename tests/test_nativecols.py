"""The column-wise Native encoder writes clickhouse-connect's bytes, or raises its error.

Every case compares :func:`chworkers.clickhouse.nativecols.encode_columns` with
clickhouse-connect's own serializer (``NativeTransform.build_insert``) on the same data:
the same bytes, or the same exception. Awkward values on purpose: None, empty and
non-ASCII strings, extremes and values out of range, naive and aware datetimes before
1970 and near the types' limits, values of the wrong type, the local time zone not UTC.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from clickhouse_connect import common as cc_common
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.insert import InsertContext
from clickhouse_connect.driver.transform import NativeTransform
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chworkers.clickhouse import nativecols, nativewriters
from chworkers.clickhouse.dedup import normalize
from chworkers.errors import BatchError

UTC = dt.UTC
ZONES = [UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), ZoneInfo("America/New_York")]


def reference(
    names: Sequence[str],
    types: Sequence[str],
    data: Any,
    column_oriented: bool = False,
    server_tz: dt.tzinfo = UTC,
) -> bytes | Exception:
    """clickhouse-connect's Native body for ``data`` (its INSERT statement cut off)."""
    ctx = InsertContext(
        "t",
        list(names),
        [get_from_name(t) for t in types],
        data,
        column_oriented=column_oriented,
        server_tz=server_tz,
    )
    log = logging.getLogger("clickhouse_connect.driver.transform")
    level, log.level = log.level, logging.CRITICAL  # it logs every rejected column
    try:
        body = b"".join(NativeTransform.build_insert(ctx))
    finally:
        log.level = level
    if ctx.insert_exception is not None:
        return ctx.insert_exception
    return body[body.index(b"FORMAT Native\n") + len(b"FORMAT Native\n") :]


def ours(
    names: Sequence[str],
    types: Sequence[str],
    data: Any,
    column_oriented: bool = False,
    server_tz: dt.tzinfo = UTC,
) -> bytes | Exception | None:
    encoders = [nativecols.ColumnEncoder(n, t) for n, t in zip(names, types, strict=True)]
    try:
        return nativecols.encode_columns("t", encoders, data, column_oriented, server_tz)
    except Exception as exc:
        return exc


def same(names: Sequence[str], types: Sequence[str], rows: list[Any], **kw: Any) -> None:
    expected = reference(names, types, rows, **kw)
    got = ours(names, types, rows, **kw)
    if isinstance(expected, Exception):
        assert isinstance(got, Exception), f"clickhouse-connect raised {expected!r}, we wrote"
        assert (type(got), str(got)) == (type(expected), str(expected))
    else:
        assert got == expected
    # Column-oriented, the same columns.
    columns = [[row[k] for row in rows] for k in range(len(names))]
    expected = reference(names, types, columns, column_oriented=True, **kw)
    got = ours(names, types, columns, column_oriented=True, **kw)
    if isinstance(expected, Exception):
        assert isinstance(got, Exception)
    else:
        assert got == expected


@contextlib.contextmanager
def local_zone(name: str) -> Iterator[None]:
    """The process's local time zone (what naive datetimes are converted in)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@contextlib.contextmanager
def naive_insert(mode: str) -> Iterator[None]:
    old = cc_common.get_setting("naive_datetime_insert")
    cc_common.set_setting("naive_datetime_insert", mode)
    try:
        yield
    finally:
        cc_common.set_setting("naive_datetime_insert", old)


# -- value strategies: the right type mostly, awkward values often, wrong types sometimes ---

naive_datetimes = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2300, 1, 1))
in_range = st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2106, 2, 6))
datetimes = st.one_of(
    in_range,
    naive_datetimes,
    st.builds(lambda d, z: d.replace(tzinfo=z), in_range, st.sampled_from(ZONES)),
    st.sampled_from(
        [
            dt.datetime(1970, 1, 1),
            dt.datetime(1969, 12, 31, 23, 59, 59, 500_000),
            dt.datetime(2106, 2, 7, 6, 28, 15),
        ]
    ),
)
dates = st.one_of(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2300, 1, 1)), in_range)
texts = st.one_of(st.text(max_size=12), st.sampled_from(["", "é", "日本語", "a" * 200, "\x00"]))


def of(main: st.SearchStrategy[Any], *odd: Any) -> st.SearchStrategy[Any]:
    """``main`` values, with None and the ``odd`` values now and then."""
    return st.one_of(main, main, main, st.none(), st.sampled_from([*odd, None]))


VALUES: dict[str, st.SearchStrategy[Any]] = {
    "DateTime": of(datetimes, 0, 1_700_000_000, "2024-01-01"),
    "DateTime64": of(datetimes, 0, "2024-01-01 00:00:00"),
    "Date": of(dates, 0, 19_000, dt.datetime(2024, 1, 1, tzinfo=UTC)),
    "UUID": of(st.uuids(), 0, "00000000-0000-0000-0000-000000000001", b"\x01" * 16),
    "String": of(texts, b"bytes", 5),
    "FixedString": of(st.text(max_size=6), b"ab", 5),
    "Bool": of(st.booleans(), 0, 1, 2),
    "Int": of(st.integers(-(2**64), 2**64), True, 1.5, float("nan"), "7"),
    "Float": of(st.floats(), 1, 2**70, True, "1.5"),
    "Enum": of(st.sampled_from(["a", "b", "é", "", "zz"]), 1, -2, 0, 1.5),
    "Decimal": of(
        st.one_of(st.decimals(places=4), st.integers(-(10**12), 10**12), st.decimals()),
        "1.5",
        1.25,
        Decimal("-0"),
    ),
}

CASES = [
    ("DateTime", ["DateTime", "DateTime('Asia/Tokyo')", "DateTime('UTC')"]),
    (
        "DateTime64",
        ["DateTime64(0)", "DateTime64(3)", "DateTime64(6, 'UTC')", "DateTime64(9, 'Asia/Tokyo')"],
    ),
    ("Date", ["Date", "Date32"]),
    ("UUID", ["UUID"]),
    ("String", ["String", "LowCardinality(String)"]),
    ("FixedString", ["FixedString(1)", "FixedString(4)"]),
    ("Bool", ["Bool"]),
    ("Int", [f"{s}Int{b}" for s in ("", "U") for b in (8, 16, 32, 64)]),
    ("Float", ["Float32", "Float64"]),
    ("Enum", ["Enum8('a' = 1, 'b' = -2, 'é' = 127)", "Enum16('a' = -32768, 'b' = 32767, '' = 0)"]),
    ("Decimal", ["Decimal(9, 2)", "Decimal(18, 4)", "Decimal32(0)", "Decimal(38, 10)"]),
]
TYPES = [(kind, t) for kind, names in CASES for t in names] + [
    ("String", "LowCardinality(Nullable(String))"),
    ("String", "Array(String)"),  # not ours: clickhouse-connect's all the way
]


#: 12 random columns per type (33 types, each plain and Nullable): ~800 columns of up to
#: 20 awkward values checked per run, each a new draw. At 30 this test alone was ~90 s of
#: the suite's CPU on a loaded 2-core machine.
@pytest.mark.parametrize(("kind", "type_name"), TYPES, ids=[t for _, t in TYPES])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bytes_match_clickhouse_connect(kind: str, type_name: str, data: st.DataObject) -> None:
    strategy = VALUES[kind]
    if type_name.startswith("Array"):
        strategy = st.lists(texts, max_size=3)
    # Columns of one type of value (what fast paths take) and of mixed values.
    pure = strategy.filter(lambda v: v is not None)
    values = data.draw(
        st.one_of(
            st.lists(pure, min_size=1, max_size=20), st.lists(strategy, min_size=1, max_size=20)
        )
    )
    for wrapped in (type_name, f"Nullable({type_name})"):
        if wrapped.startswith("Nullable(") and (
            "LowCardinality" in type_name or "Array" in type_name
        ):
            continue
        same(["c"], [wrapped], [(v,) for v in values])


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/Sao_Paulo"])
@pytest.mark.parametrize("mode", ["local", "server"])
@settings(max_examples=12, deadline=None)
@given(values=st.lists(st.one_of(datetimes, st.none()), min_size=1, max_size=20))
def test_datetimes_in_any_local_zone_and_naive_insert_mode(
    zone: str, mode: str, values: list[Any]
) -> None:
    types = [
        "Nullable(DateTime)",
        "Nullable(DateTime('Asia/Tokyo'))",
        "Nullable(DateTime64(3, 'Europe/Paris'))",
    ]
    with local_zone(zone), naive_insert(mode):
        for server_tz in (UTC, ZoneInfo("Asia/Kolkata")):
            same(["a", "b", "c"], types, [(v, v, v) for v in values], server_tz=server_tz)


def test_extremes_and_edges() -> None:
    ints = [
        0,
        1,
        -1,
        127,
        -128,
        255,
        32767,
        -32768,
        65535,
        2**31 - 1,
        -(2**31),
        2**32 - 1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
    ]
    for t in [f"{s}Int{b}" for s in ("", "U") for b in (8, 16, 32, 64)]:
        for v in ints:
            same(["c"], [f"Nullable({t})"], [(v,), (None,)])
            same(["c"], [t], [(v,), (v,)])
    for column, t in [
        ([None, None], "Nullable(DateTime)"),
        ([None, None], "Nullable(Date)"),
        ([None], "Nullable(UUID)"),
        ([None], "LowCardinality(Nullable(String))"),
        (["", ""], "LowCardinality(String)"),
        ([f"k{i}" for i in range(300)], "LowCardinality(String)"),  # 2-byte keys
        ([f"k{i}" for i in range(66_000)], "LowCardinality(String)"),  # 4-byte keys
        (["abcd", "abcde"], "FixedString(4)"),  # too long: clickhouse-connect's error
        (["\ud800"], "FixedString(4)"),  # cannot be encoded
        ([dt.datetime(2106, 2, 7, 6, 28, 16)], "DateTime"),  # past UInt32
        ([dt.datetime(1969, 12, 31, 23, 59, 59)], "DateTime"),
        ([dt.datetime(2299, 12, 31, 23, 59, 59, 999_999)], "DateTime64(9)"),  # past Int64
        ([dt.date(1969, 12, 31)], "Date"),
        ([dt.date(2149, 6, 7)], "Date"),
        ([dt.date(1900, 1, 1)], "Date32"),
        ([uuid.UUID(int=2**128 - 1), uuid.UUID(int=1)], "UUID"),
        # More digits than the precision: rounded in its context, not truncated.
        ([Decimal("1234567.895"), Decimal("-1234567.885"), 10**7], "Decimal(9, 2)"),
        ([Decimal("12345678901234.56785"), Decimal("0.00005")], "Decimal(18, 4)"),
        ([Decimal("NaN")], "Decimal(9, 2)"),
        ([Decimal("Infinity")], "Nullable(Decimal(9, 2))"),
    ]:
        same(["c"], [t], [(v,) for v in column])


def test_blocks_are_cut_where_clickhouse_connect_cuts_them() -> None:
    # ~100 KB rows: clickhouse-connect writes blocks of a few dozen rows.
    rows = [
        (i, "x" * 100_000 + str(i), dt.datetime(2024, 1, 1) + dt.timedelta(seconds=i))
        for i in range(50)
    ]
    types = ["UInt32", "String", "DateTime"]
    body = ours(["a", "b", "c"], types, rows)
    assert isinstance(body, bytes) and body.count(b"\x01a\x06UInt32") == 2  # two blocks
    same(["a", "b", "c"], types, rows)


def test_rows_that_are_not_all_as_wide_as_the_columns_are_left_to_the_plain_path() -> None:
    assert ours(["a", "b"], ["UInt8", "UInt8"], [(1, 2), (3,)]) is None
    assert ours(["a", "b"], ["UInt8", "UInt8"], [(1, 2), (3, 4, 5)]) is None
    assert ours(["a", "b"], ["UInt8", "UInt8"], [(1, 2), 5]) is None
    assert ours(["a"], ["UInt8"], []) is None


def test_the_fast_row_width_check_still_names_the_row_to_blame() -> None:
    names = ("a", "b")
    for rows, bad in [
        ([(1, 2), [3, 4], (5,)], 2),
        ([(1, 2), "ab"], 1),
        ([(1, 2), {"a": 1, "b": 2}], 1),
    ]:
        with pytest.raises(BatchError) as info:
            normalize(rows, names, table="events")
        assert (info.value.reason, info.value.row) == ("row width", bad)
    # Rows of other sequence types still pass the row-by-row check.
    assert normalize([range(2), (1, 2)], names).rows == 2


def test_the_common_types_take_our_writers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clean columns of the covered types never reach clickhouse-connect's writers (so the
    comparisons above test ours, not a fallback)."""
    from clickhouse_connect.datatypes.base import ClickHouseType

    def refuse(*_: Any) -> None:
        raise AssertionError("clickhouse-connect's column writer was called")

    day = dt.datetime(2024, 5, 1, 12, 30, 15, 123_456)
    columns = {
        "DateTime('Asia/Tokyo')": [day, day],
        "Nullable(DateTime)": [None, day],
        "DateTime64(3, 'UTC')": [day, day],
        "Nullable(DateTime64(9))": [day, None],
        "Date": [day.date(), day],
        "Nullable(Date32)": [None, day.date()],
        "UUID": [uuid.uuid4(), uuid.uuid4()],
        "Nullable(UUID)": [None, uuid.uuid4()],
        "FixedString(3)": ["ab", "日"],
        "Bool": [True, False],
        "Nullable(Int64)": [None, -(2**63)],
        "Nullable(UInt8)": [255, 0],
        "Enum8('a' = 1, 'b' = 2)": ["a", "b"],
        "Nullable(Enum16('a' = 1000))": [None, "a"],
        "Decimal(18, 4)": [Decimal("1.2345"), 7],
        "Nullable(Decimal(9, 2))": [None, Decimal("-3.5")],
        "LowCardinality(String)": [f"k{i % 300}" for i in range(2)],
        "LowCardinality(Nullable(String))": [None, "x"],
    }
    # Made first: making one checks its writer against clickhouse-connect's.
    encoders = {t: nativecols.ColumnEncoder("c", t) for t in columns}
    monkeypatch.setattr(ClickHouseType, "write_column", refuse)
    monkeypatch.setattr(ClickHouseType, "_write_column_low_card", refuse)
    for type_name, column in columns.items():
        encoder = encoders[type_name]
        body = nativecols.encode_columns("t", [encoder], [(v,) for v in column], False, UTC)
        assert body is not None, type_name


@pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
@pytest.mark.parametrize("mode", ["local", "server"])
def test_repeated_datetimes_are_converted_once_each_with_the_same_bytes(
    zone: str, mode: str
) -> None:
    # 5,000 rows from a few values: the encoder converts each distinct value once. Equal
    # but not identical values among them: the same instant in two zones, and the two
    # 01:30 of the night New York's clocks go back (fold=1 differs in local time).
    new_york = ZoneInfo("America/New_York")
    night = dt.datetime(2024, 11, 3, 1, 30, 15, 250_000)
    pool = [
        dt.datetime(2024, 5, 1, 12, 0, 0),
        dt.datetime(2024, 5, 1, 12, 0, 0, 999_999),
        dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        dt.datetime(2024, 5, 1, 8, 0, tzinfo=new_york),  # the same instant as the last
        night,
        night.replace(tzinfo=new_york),
        None,
    ]
    types = ["Nullable(DateTime)", "Nullable(DateTime64(6))", "Nullable(DateTime('Asia/Tokyo'))"]
    rows = [(v, v, v) for v in (pool[i % len(pool)] for i in range(5000))]
    with local_zone(zone), naive_insert(mode):
        same(["a", "b", "c"], types, rows)
        folded = [*rows, *[(v, v, v) for v in [night.replace(fold=1)] * 3]]
        same(["a", "b", "c"], types, folded)
        folded = [(night.replace(fold=i % 2),) * 3 for i in range(5000)]
        same(["a", "b", "c"], types, folded)


def test_a_writer_that_disagrees_with_this_clickhouse_connect_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another clickhouse-connect version may convert values differently: each writer is
    checked against it on a few values when a column's encoder is made."""
    covered = [
        *("DateTime", "DateTime64(3)", "Date", "Date32", "UUID", "FixedString(2)", "Bool"),
        *("Enum8('a' = 1)", "Decimal(9, 2)", "LowCardinality(String)", "Nullable(Int32)"),
        *("LowCardinality(Nullable(String))", "Nullable(DateTime)"),
    ]
    assert all(nativecols.ColumnEncoder("c", t).writer is not None for t in covered)

    def off_by_one(*_: Any) -> bytes:
        return b"\x01\x00\x00\x00" * 3

    monkeypatch.setitem(nativewriters.WRITERS, "DateTime", off_by_one)
    with caplog.at_level(logging.WARNING, logger="chworkers.clickhouse.nativecols"):
        encoder = nativecols.ColumnEncoder("c", "DateTime")
    assert encoder.writer is None
    assert "DateTime" in caplog.text
    same(["c"], ["DateTime"], [(dt.datetime(2024, 1, 1),)])
