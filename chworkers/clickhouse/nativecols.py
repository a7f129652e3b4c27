"""A column-wise ClickHouse Native encoder, byte for byte what clickhouse-connect writes.

clickhouse-connect serializes rows by pivoting them (``zip(*rows)``, slow for 100k rows
of four values) and then converting each column value by value in Python (a method call
per datetime, say). This encoder takes each column out of the rows with one
``operator.itemgetter`` pass, cuts blocks where clickhouse-connect cuts them, and writes
the columns below with C-level passes (``map`` over builtins, ``array``, ``bytes.join``):

* ``DateTime``, ``DateTime64(p[, tz])``, ``Date``, ``Date32`` of ``datetime``/``date``
  values, with the same conversion clickhouse-connect applies (the process's local time
  for naive values, or the column's or server's zone with its ``naive_datetime_insert =
  'server'`` setting);
* ``UUID`` of ``uuid.UUID`` values, ``FixedString(n)`` of ``str``, ``Bool`` of ``bool``,
  ``Enum8``/``Enum16`` of names, ``Decimal(p, s)`` up to 18 digits of ``Decimal``/``int``;
* ``LowCardinality(String)`` and ``LowCardinality(Nullable(String))`` of ``str``;
* ``Nullable(T)`` of any plain T: the null map here, the values by the writers above or,
  for integers, ``Float64``, ``String`` and the rest, by clickhouse-connect's own.

Every other column (and any column of other value types: ints in a ``DateTime`` column,
numpy scalars, strings for UUIDs...) is written by clickhouse-connect's serializer for
its type, which for numbers and ``String`` is already C; every fast writer gives way to
it when a value is not of the exact type it handles, or is out of range, so the bytes and
the errors are clickhouse-connect's in all cases. ``tests/test_nativecols.py`` compares
the bytes for each type over awkward values.
"""

from __future__ import annotations

import logging
import math
import sys
import uuid
from array import array
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal, localcontext
from itertools import repeat
from operator import add, attrgetter, floordiv, is_, itemgetter, mul
from typing import Any

from clickhouse_connect import common as cc_common
from clickhouse_connect.datatypes.base import ClickHouseType
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.insert import InsertContext

__all__ = ["ColumnEncoder", "encode_columns"]

log = logging.getLogger(__name__)

NoneType = type(None)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)  # timestamp() == 0.0 in any zone
_EPOCH_DATE = date(1970, 1, 1)
_NULL_UUID = uuid.UUID(int=0)
_ZERO_FOR_NONE: dict[Any, Any] = {None: 0}
_DATETIME_FOR_NONE: dict[Any, Any] = {None: _EPOCH_UTC}
_DATE_FOR_NONE: dict[Any, Any] = {None: _EPOCH_DATE}
_UUID_FOR_NONE: dict[Any, Any] = {None: _NULL_UUID}
_DISTINCT_MIN_ROWS, _DISTINCT_SAMPLE = 4096, 1024
_STRUCT_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}  # what clickhouse-connect packs with "<"

#: ``writer(ctype, column, ctx) -> bytes`` or None to leave the column to clickhouse-connect.
Writer = Callable[[Any, Sequence[Any], InsertContext], "bytes | bytearray | None"]


def _code(size: int, signed: bool) -> str | None:
    """The ``array`` code whose items are ``size`` bytes (native order is little-endian
    here), the same width clickhouse-connect packs with ``struct``; None if there is none."""
    code = _STRUCT_CODES.get(size)
    if code is None or sys.byteorder != "little":
        return None
    code = code if signed else code.upper()
    return code if array(code).itemsize == size else None


def _packed(code: str | None, values: Any) -> bytes | None:
    if code is None:
        return None
    try:
        return array(code, values).tobytes()
    except (OverflowError, TypeError, ValueError):  # clickhouse-connect reports these its way
        return None


def _types(column: Sequence[Any]) -> set[type]:
    return set(map(type, column))


def _with(column: Sequence[Any], nullable: bool, kind: type, for_none: dict[Any, Any]) -> Any:
    """``column`` with None replaced (Nullable), when every value is a ``kind`` or None;
    else None. The replacement is a value the writer turns into clickhouse-connect's 0."""
    types = _types(column)
    if not nullable:
        return column if types == {kind} else None
    if not types <= {kind, NoneType}:
        return None
    return list(map(for_none.get, column, column)) if NoneType in types else column


def _timestamps(ctype: Any, column: Sequence[Any], ctx: InsertContext) -> Any:
    """``x.timestamp()`` of every value, as clickhouse-connect computes it for a column."""
    if cc_common.get_setting("naive_datetime_insert") != "server":
        return _per_distinct(datetime.timestamp, column)
    zone: tzinfo = ctype.tzinfo or ctx.server_tz

    def localized(value: datetime) -> float:
        if value.utcoffset() is None:
            value = value.replace(tzinfo=zone)
        return value.timestamp()

    return _per_distinct(localized, column)


def _per_distinct(convert: Callable[[datetime], float], values: Sequence[Any]) -> Any:
    """``map(convert, values)``, converting each distinct value once when values repeat
    (timestamps of many rows per second). Values that are equal convert alike, except the
    two readings of a wall-clock time the clocks went back over (``fold``): when one of the
    distinct values is such a time, every value is converted."""
    if len(values) >= _DISTINCT_MIN_ROWS:
        head = values[:_DISTINCT_SAMPLE]
        if len(set(head)) * 4 <= len(head):
            distinct = list(dict.fromkeys(values))
            if len(distinct) * 2 <= len(values):
                converted = list(map(convert, distinct))
                twins = (value.replace(fold=1 - value.fold) for value in distinct)
                if list(map(convert, twins)) == converted:
                    return map(dict(zip(distinct, converted, strict=True)).__getitem__, values)
    return map(convert, values)


def _datetime(ctype: Any, column: Sequence[Any], ctx: InsertContext) -> bytes | None:
    values = _with(column, ctype.nullable, datetime, _DATETIME_FOR_NONE)
    if values is None:
        return None
    return _packed(_code(4, False), map(int, _timestamps(ctype, values, ctx)))


def _datetime64(ctype: Any, column: Sequence[Any], ctx: InsertContext) -> bytes | None:
    values = _with(column, ctype.nullable, datetime, _DATETIME_FOR_NONE)
    if values is None:
        return None
    seconds = map(math.floor, _timestamps(ctype, values, ctx))
    micros = map(add, map(mul, seconds, repeat(1_000_000)), map(attrgetter("microsecond"), values))
    ticks = micros
    if ctype.prec != 1_000_000:
        ticks = map(floordiv, map(mul, micros, repeat(ctype.prec)), repeat(1_000_000))
    return _packed(_code(8, True), ticks)


def _date(ctype: Any, column: Sequence[Any], _ctx: InsertContext) -> bytes | None:
    types = _types(column)
    if not types or not types <= {date, datetime, NoneType} or types == {NoneType}:
        return None  # an all-None Nullable(Date) column takes clickhouse-connect's int path
    if NoneType in types:
        if not ctype.nullable:
            return None
        column = list(map(_DATE_FOR_NONE.get, column, column))
    days = map(add, map(date.toordinal, column), repeat(-_EPOCH_ORDINAL))
    return _packed(_code(ctype.byte_size, ctype.byte_size == 4), days)


def _uuid(ctype: Any, column: Sequence[Any], _ctx: InsertContext) -> bytes | None:
    values = _with(column, ctype.nullable, uuid.UUID, _UUID_FOR_NONE)
    if values is None:
        return None
    # clickhouse-connect writes the high then the low 64 bits, each little-endian.
    words = array("Q", b"".join(map(attrgetter("bytes"), values)))
    if sys.byteorder == "little":
        words.byteswap()
    return words.tobytes()


def _fixed_string(ctype: Any, column: Sequence[Any], ctx: InsertContext) -> bytes | None:
    if ctype.nullable or _types(column) != {str}:
        return None
    size = ctype.byte_size
    try:
        encoded = list(map(str.encode, column, repeat(ctx.encoding or ctype.encoding)))
    except UnicodeError:
        return None
    if max(map(len, encoded)) > size:
        return None  # clickhouse-connect's error names the value
    return b"".join(map(bytes.ljust, encoded, repeat(size), repeat(b"\0")))


def _bool(ctype: Any, column: Sequence[Any], _ctx: InsertContext) -> bytes | None:
    values = _with(column, ctype.nullable, bool, _ZERO_FOR_NONE)
    return None if values is None else bytes(values)


def _enum(ctype: Any, column: Sequence[Any], _ctx: InsertContext) -> bytes | None:
    types = _types(column)
    if str not in types or not types <= ({str, NoneType} if ctype.nullable else {str}):
        return None  # codes (or all None) take clickhouse-connect's other path
    code = _code(ctype.byte_size, True)
    return _packed(code, map(ctype._name_map.get, column, repeat(0)))  # unknown names: 0


def _decimal(ctype: Any, column: Sequence[Any], _ctx: InsertContext) -> bytes | None:
    if ctype.byte_size > 8 or not _types(column) <= {Decimal, int, NoneType}:
        return None  # Decimal128/256 are written value by value either way
    if ctype.nullable:
        column = list(map(_ZERO_FOR_NONE.get, column, column))
    # clickhouse-connect's int(Decimal(str(x)) * 10**scale), in a context of the precision.
    with localcontext() as context:
        context.prec = ctype.prec
        scaled = map(int, map(mul, map(Decimal, map(str, column)), repeat(ctype._mult)))
        return _packed(_code(ctype.byte_size, True), list(scaled))


def _int(ctype: Any, column: Sequence[Any], _ctx: InsertContext) -> bytes | None:
    # Only Nullable columns gain: clickhouse-connect replaces None in a Python loop.
    if not ctype.nullable:
        return None
    types = _types(column)
    if int not in types or not types <= {int, NoneType}:
        return None
    code = _code(ctype.byte_size, ctype._array_type.islower())
    return _packed(code, map(_ZERO_FOR_NONE.get, column, column))


def _low_card_string(ctype: Any, column: Sequence[Any], ctx: InsertContext) -> bytearray | None:
    types = _types(column)
    if not (types == {str} or (ctype.nullable and types <= {str, NoneType})):
        return None
    keys_of = dict.fromkeys(column)  # first-seen order, as clickhouse-connect builds it
    if ctype.nullable:
        keys_of.pop(None, None)
        index: list[Any] = [None, *keys_of]
    else:
        index = list(keys_of)
    positions = {value: n for n, value in enumerate(index)}
    ix_type = int(math.log(len(index), 2)) >> 3
    code = _code(1 << ix_type, False)
    keys = _packed(code, map(positions.__getitem__, column))
    if keys is None:
        return None
    out = bytearray()
    out += (1).to_bytes(8, "little")  # the LowCardinality serialization version
    out += ((1 << 9) | (1 << 10) | ix_type).to_bytes(8, "little")
    out += len(index).to_bytes(8, "little")
    ctype._write_column_binary(index, out, ctx)
    out += len(column).to_bytes(8, "little")
    out += keys
    return out


_WRITERS: dict[str, Writer] = {
    "DateTime": _datetime,
    "DateTime64": _datetime64,
    "Date": _date,
    "Date32": _date,
    "UUID": _uuid,
    "FixedString": _fixed_string,
    "Bool": _bool,
    "Boolean": _bool,
    "Enum8": _enum,
    "Enum16": _enum,
    "Decimal": _decimal,
    **{f"{sign}Int{bits}": _int for sign in ("", "U") for bits in (8, 16, 32, 64)},
}


def _plain(ctype: ClickHouseType) -> bool:
    """Whether clickhouse-connect writes ``ctype`` by the base class's column methods."""
    cls = type(ctype)
    return (
        cls.write_column is ClickHouseType.write_column
        and cls.write_column_data is ClickHouseType.write_column_data
        and cls.write_column_prefix is ClickHouseType.write_column_prefix
    )


class ColumnEncoder:
    """One column's writer: ours where we have one for its type, else clickhouse-connect's."""

    __slots__ = ("ctype", "header", "name", "writer")

    def __init__(self, name: str, type_name: str) -> None:
        ctype = get_from_name(type_name)
        self.name = name
        self.ctype = ctype
        enc_name, enc_type = name.encode(), ctype.insert_name.encode()
        self.header = _leb128(len(enc_name)) + enc_name + _leb128(len(enc_type)) + enc_type
        writer: Writer | None = None
        if _plain(ctype):
            if ctype.low_card:
                if ctype.base_type == "String":
                    writer = _low_card_string
            else:
                writer = _WRITERS.get(str(ctype.base_type))
                if writer is None and ctype.nullable:
                    writer = _nullable_only
        self.writer = writer
        if writer is not None and not self._agrees():
            log.warning(
                "this clickhouse-connect writes %s columns differently than chworkers "
                "expects: they are left to its own serializer",
                ctype.name,
            )
            self.writer = None

    def write(self, column: Sequence[Any], dest: bytearray, ctx: InsertContext) -> None:
        ctx.start_column(self.name)
        body = self._ours(column, ctx)
        if body is None:
            self.ctype.write_column(column, dest, ctx)
        else:
            dest += body

    def _ours(self, column: Sequence[Any], ctx: InsertContext) -> bytes | bytearray | None:
        ctype, writer = self.ctype, self.writer
        if writer is None or not len(column) or ctype.write_format(ctx) != "native":
            return None
        try:
            body = writer(ctype, column, ctx)
        except (TypeError, ValueError, ArithmeticError, AttributeError):
            return None
        if body is None or not ctype.nullable or ctype.low_card or writer is _nullable_only:
            return body
        return bytes(map(is_, column, repeat(None))) + body

    def _agrees(self) -> bool:
        """Whether our writer and clickhouse-connect's write a few typical values alike
        (what the tests prove for the clickhouse-connect they run with; this catches
        another version that changed how it converts values)."""
        ctype = self.ctype
        probe = _PROBES.get(str(ctype.base_type), lambda _: [])(ctype)
        if ctype.nullable:
            probe = [*probe, None]
        if not probe:
            return True
        ctx = InsertContext("probe", [self.name], [ctype], None)
        ctx.start_column(self.name)
        theirs = bytearray()
        try:
            ctype.write_column(probe, theirs, ctx)
        except Exception:
            return False
        ours = self._ours(probe, ctx)
        return ours is None or ours == theirs  # declining is always safe


_PROBE_TIME = datetime(1969, 7, 20, 20, 17, 40, 999_999)
_PROBES: dict[str, Callable[[Any], list[Any]]] = {
    "DateTime": lambda _: [
        datetime(2024, 5, 1, 12, 30, 15, 500_000),
        _PROBE_TIME.replace(year=2038),
    ],
    "DateTime64": lambda _: [_PROBE_TIME, datetime(2024, 5, 1, 12, 30, 15, 123_456, tzinfo=UTC)],
    "Date": lambda _: [date(2024, 5, 1), datetime(2001, 2, 3, 4, 5, 6)],
    "Date32": lambda _: [date(1950, 5, 1), datetime(2001, 2, 3, 4, 5, 6)],
    "UUID": lambda _: [uuid.UUID("01234567-89ab-cdef-fedc-ba9876543210")],
    "FixedString": lambda _: ["a", ""],
    "Bool": lambda _: [True, False],
    "Enum8": lambda ctype: list(ctype._name_map)[:2],
    "Enum16": lambda ctype: list(ctype._name_map)[:2],
    "Decimal": lambda _: [Decimal("-1.5"), 7],
    "String": lambda _: ["a", "日本", "a"],
    **{f"{sign}Int{bits}": lambda _: [1, 0] for sign in ("", "U") for bits in (8, 16, 32, 64)},
}


def _nullable_only(ctype: Any, column: Sequence[Any], ctx: InsertContext) -> bytearray:
    """Nullable(T) of a T with no writer here: the null map here, the values by
    clickhouse-connect's writer for T (what its ``write_column_data`` does)."""
    out = bytearray(map(is_, column, repeat(None)))
    ctype._write_column_binary(column, out, ctx)
    return out


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(0x80 | byte)


def encode_columns(
    table: str,
    columns: Sequence[ColumnEncoder],
    data: Sequence[Any],
    column_oriented: bool,
    server_tz: tzinfo,
    *,
    widths_checked: bool = False,
) -> bytes | None:
    """``data`` (rows, or columns with ``column_oriented``) as Native blocks, cut where
    clickhouse-connect cuts them; None when there is nothing to encode or the rows are not
    all as wide as ``columns`` (the caller then takes the plain insert path, which reports
    it; ``widths_checked`` says the caller has made sure they are). A value
    clickhouse-connect's serializer rejects raises its error."""
    names = [c.name for c in columns]
    ctx = InsertContext(
        table,
        names,
        [c.ctype for c in columns],
        data,
        column_oriented=column_oriented,
        server_tz=server_tz,
    )
    total = ctx.row_count
    if not total or ctx.column_count != len(columns):
        return None
    if column_oriented:
        if {len(column) for column in data} != {total}:
            return None
    elif not widths_checked and _widths(data) != {len(columns)}:
        return None
    step = ctx.block_row_count
    out = bytearray()
    for start in range(0, total, step):
        stop = min(start + step, total)
        if column_oriented:
            block = data if start == 0 and stop == total else [c[start:stop] for c in data]
        else:
            rows = data if start == 0 and stop == total else data[start:stop]
            block = [tuple(map(itemgetter(k), rows)) for k in range(len(columns))]
        out += _leb128(len(columns))
        out += _leb128(stop - start)
        for encoder, column in zip(columns, block, strict=True):
            out += encoder.header
            encoder.write(column, out, ctx)
    return bytes(out)


def _widths(rows: Sequence[Any]) -> set[int]:
    try:
        return set(map(len, rows))
    except TypeError:  # a row without a length
        return set()
