"""The per-type column writers of :mod:`chworkers.clickhouse.nativecols`.

Each ``writer(ctype, column, ctx)`` returns the column's bytes as clickhouse-connect
writes them (without the null map of a Nullable column, which the encoder adds), or None
when a value is not of the exact type it handles or is out of range: the column then goes
to clickhouse-connect's own writer, whose bytes or error it is. Every conversion below is
clickhouse-connect's, value for value, done by C-level passes (``map`` over builtins,
``array``, ``bytes.join``) instead of a Python loop.

Only clickhouse-connect's public API is used: a type's public attributes (``nullable``,
``byte_size``, ``prec``, ``scale``, ``tzinfo``, ``type_def``: the names and values of an
Enum) and its public ``write_column_data``; tests/faults/test_fault_nativecols_public.py
fails when a private name creeps back in, and each writer is checked against the
installed clickhouse-connect when a column's encoder is made (nativecols ``_agrees``).
"""

from __future__ import annotations

import math
import sys
import uuid
from array import array
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal, localcontext
from itertools import repeat
from operator import add, attrgetter, floordiv, mul
from typing import Any

from clickhouse_connect import common as cc_common
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.insert import InsertContext

__all__ = ["WRITERS", "Writer", "low_card_string"]

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
#: Writes a LowCardinality(String) column's dictionary (plain strings, as its own writer).
_STRING = get_from_name("String")

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
    names = dict(zip(ctype.type_def.keys, ctype.type_def.values, strict=True))
    return _packed(code, map(names.get, column, repeat(0)))  # unknown names: 0


def _decimal(ctype: Any, column: Sequence[Any], _ctx: InsertContext) -> bytes | None:
    if ctype.byte_size > 8 or not _types(column) <= {Decimal, int, NoneType}:
        return None  # Decimal128/256 are written value by value either way
    if ctype.nullable:
        column = list(map(_ZERO_FOR_NONE.get, column, column))
    # clickhouse-connect's int(Decimal(str(x)) * 10**scale), in a context of the precision.
    with localcontext() as context:
        context.prec = ctype.prec
        mult = 10**ctype.scale
        scaled = map(int, map(mul, map(Decimal, map(str, column)), repeat(mult)))
        return _packed(_code(ctype.byte_size, True), list(scaled))


def _int(ctype: Any, column: Sequence[Any], _ctx: InsertContext) -> bytes | None:
    # Only Nullable columns gain: clickhouse-connect replaces None in a Python loop.
    if not ctype.nullable:
        return None
    types = _types(column)
    if int not in types or not types <= {int, NoneType}:
        return None
    code = _code(ctype.byte_size, not str(ctype.base_type).startswith("UInt"))
    return _packed(code, map(_ZERO_FOR_NONE.get, column, column))


def low_card_string(ctype: Any, column: Sequence[Any], ctx: InsertContext) -> bytearray | None:
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
    # The dictionary's first entry of a Nullable one stands for NULL: written empty.
    _STRING.write_column_data(["" if v is None else v for v in index], out, ctx)
    out += len(column).to_bytes(8, "little")
    out += keys
    return out


WRITERS: dict[str, Writer] = {
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
