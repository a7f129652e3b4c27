"""A column-wise ClickHouse Native encoder, byte for byte what clickhouse-connect writes.

clickhouse-connect serializes rows by pivoting them (``zip(*rows)``, slow for 100k rows
of four values) and then converting each column value by value in Python (a method call
per datetime, say). This encoder takes each column out of the rows with one
``operator.itemgetter`` pass, cuts blocks where clickhouse-connect cuts them, and writes
these columns with C-level passes (:mod:`chworkers.clickhouse.nativewriters`):

* ``DateTime``, ``DateTime64(p[, tz])``, ``Date``, ``Date32`` of ``datetime``/``date``
  values, with the same conversion clickhouse-connect applies (the process's local time
  for naive values, or the column's or server's zone with its ``naive_datetime_insert =
  'server'`` setting);
* ``UUID`` of ``uuid.UUID`` values, ``FixedString(n)`` of ``str``, ``Bool`` of ``bool``,
  ``Enum8``/``Enum16`` of names, ``Decimal(p, s)`` up to 18 digits of ``Decimal``/``int``;
* ``LowCardinality(String)`` and ``LowCardinality(Nullable(String))`` of ``str``;
* ``Nullable(T)`` of the types above and of integers: the null map here, the values by
  the writers above (other Nullable columns are clickhouse-connect's, whose null map
  costs the same).

Every other column (and any column of other value types: ints in a ``DateTime`` column,
numpy scalars, strings for UUIDs...) is written by clickhouse-connect's serializer for
its type, which for numbers and ``String`` is already C; every fast writer gives way to
it when a value is not of the exact type it handles, or is out of range, so the bytes and
the errors are clickhouse-connect's in all cases. ``tests/test_nativecols.py`` compares
the bytes for each type over awkward values.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from itertools import repeat
from operator import is_, itemgetter
from typing import Any

from clickhouse_connect.datatypes.base import ClickHouseType
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.insert import InsertContext

from chworkers.clickhouse import nativewriters

__all__ = ["ColumnEncoder", "encode_columns"]

log = logging.getLogger(__name__)


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
        writer: nativewriters.Writer | None = None
        if _plain(ctype):
            if ctype.low_card:
                if ctype.base_type == "String":
                    writer = nativewriters.low_card_string
            else:
                writer = nativewriters.WRITERS.get(str(ctype.base_type))
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
        if body is None or not ctype.nullable or ctype.low_card:
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
    "Enum8": lambda ctype: list(ctype.type_def.keys)[:2],
    "Enum16": lambda ctype: list(ctype.type_def.keys)[:2],
    "Decimal": lambda _: [Decimal("-1.5"), 7],
    "String": lambda _: ["a", "日本", "a"],
    **{f"{sign}Int{bits}": lambda _: [1, 0] for sign in ("", "U") for bits in (8, 16, 32, 64)},
}


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
