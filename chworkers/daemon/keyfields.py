"""Reading a record's sharding-key fields as ClickHouse would store them.

The daemon passes records through to ClickHouse unparsed, but to route a row to its
shard it must evaluate the pipeline's ``sharding_key`` on the values ClickHouse will
store, typed by the table's columns: ``sipHash64(user_id)`` hashes the 8 bytes of a
UInt64 and the bytes of a String differently, and ``{"user_id": 300}`` is 44 in a
UInt8 (the key columns: :mod:`chworkers.daemon.keycolumns`). :class:`KeyReader` reads
only the fields the key names, from JSONEachRow, CSV and TSV records (and their
``*WithNames`` forms; the text: :mod:`chworkers.daemon.keytext`), the way ClickHouse's
input formats do with their default settings:

* integers (``Int8`` .. ``UInt256``): JSON numbers, booleans and digit strings, CSV and
  TSV digits, wrapped to the column's width as ClickHouse wraps them; an absent field,
  ``null`` and ``\\N`` are 0 (CSV: an empty field too);
* strings (``String``, ``FixedString(N)``, ``LowCardinality(String)``): JSON strings,
  and any other JSON value as the text it was written as; CSV fields unquoted (and,
  unquoted, trimmed); TSV fields unescaped; absent or null is the empty string.

A record whose key field cannot be read that way (not a number, a negative number for
an unsigned column, a NULL in a ``Nullable`` key column, an absent field whose column
has a default expression) raises :class:`~chworkers.errors.RecordKeyError` saying which
field and why: the daemon dead-letters it rather than guess a shard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from chworkers.clickhouse.inserts import LINE_FORMATS
from chworkers.daemon.keycolumns import NOT_INSERTED, Column, KeyKind, column_kind
from chworkers.daemon.keytext import chomp, csv_fields, raw_member, tsv_unescape
from chworkers.errors import ConfigError, RecordKeyError

__all__ = ["KeyReader"]

_DIGITS = re.compile(r"^[+-]?[0-9]+$")
_MISSING = object()


class KeyReader:
    """Reads the values of ``fields`` from records of ``format`` into ``columns``.

    ``columns`` are the table's, in its order (CSV and TSV without names map fields to
    them by position); ``header`` is a ``*WithNames`` batch's header record.
    """

    def __init__(
        self,
        format: str,
        fields: Sequence[str],
        columns: Sequence[Column],
        *,
        header: bytes = b"",
    ) -> None:
        if format not in LINE_FORMATS:
            raise ConfigError(
                f"format {format!r} cannot be routed by a sharding key",
                key="format",
                value=format,
                expected="one of " + ", ".join(LINE_FORMATS),
            )
        self.format = format
        self.fields = tuple(fields)
        by_name = {c.name: c for c in columns}
        missing = [f for f in self.fields if f not in by_name]
        if missing:
            raise ConfigError(
                f"the sharding key reads {', '.join(missing)}, which the table does not have "
                f"(its columns: {', '.join(by_name) or 'none'})",
                key="sharding_key",
                value=", ".join(missing),
                expected="columns of the table",
            )
        self.kinds = tuple(column_kind(by_name[f]) for f in self.fields)
        self._json = format == "JSONEachRow"
        self._csv = format.startswith("CSV")
        self._positions: tuple[int, ...] = ()
        if not self._json:
            if LINE_FORMATS[format].header:
                names = [self._text(raw, None) for raw in self._split(header.rstrip(b"\r\n"))]
                order = [(n or b"").decode("utf-8", "replace") for n in names]
            else:
                order = [c.name for c in columns if c.default_kind not in NOT_INSERTED]
            absent = [f for f in self.fields if f not in order]
            if absent:
                raise RecordKeyError(
                    f"the {format} {'header' if header else 'columns'} do not name the "
                    f"sharding key's field(s) {', '.join(absent)}",
                    field=absent[0],
                )
            self._positions = tuple(order.index(f) for f in self.fields)

    def read(self, record: bytes) -> tuple[int | bytes, ...]:
        """The key fields' values in one record (newline included or not): ints for
        integer columns, bytes for string columns (a FixedString padded to its size)."""
        if self._json:
            return self._read_json(record)
        fields = self._split(record.rstrip(b"\r\n") if not self._csv else chomp(record))
        out = []
        for kind, position in zip(self.kinds, self._positions, strict=True):
            if position >= len(fields):
                raise RecordKeyError(
                    f"field {kind.name}: the record has {len(fields)} fields, the key's is "
                    f"number {position + 1}",
                    field=kind.name,
                )
            out.append(self._value(kind, self._text(fields[position], kind)))
        return tuple(out)

    # -- JSONEachRow --------------------------------------------------------------------

    def read_all(
        self, records: Sequence[bytes]
    ) -> tuple[list[int], list[tuple[int | bytes, ...]], list[tuple[int, RecordKeyError]]]:
        """:meth:`read` for many records: the indexes and values of those that can be
        read, and the index and error of each other one. JSONEachRow records are parsed
        in one call when they can be (a batch's records are whole objects, one a line)."""
        objects: list[Any] | None = None
        if self._json and records:
            try:
                objects = json.loads(b"[" + b",".join(records) + b"]")
            except ValueError:
                objects = None  # a malformed record: each is read alone, to name it
            if objects is not None and len(objects) != len(records):
                objects = None
        indexes: list[int] = []
        read: list[tuple[int | bytes, ...]] = []
        failed: list[tuple[int, RecordKeyError]] = []
        for index, record in enumerate(records):
            try:
                if objects is None:
                    values = self.read(record)
                else:
                    values = self._json_values(objects[index], record)
            except RecordKeyError as exc:
                failed.append((index, exc))
                continue
            indexes.append(index)
            read.append(values)
        return indexes, read, failed

    def _read_json(self, record: bytes) -> tuple[int | bytes, ...]:
        try:
            obj = json.loads(record)
        except ValueError as exc:
            raise RecordKeyError(f"not a JSON object: {exc}", field=self.fields[0]) from None
        return self._json_values(obj, record)

    def _json_values(self, obj: Any, record: bytes) -> tuple[int | bytes, ...]:
        if type(obj) is not dict:
            raise RecordKeyError(
                f"not a JSON object but {type(obj).__name__}", field=self.fields[0]
            )
        out: list[int | bytes] = []
        for kind in self.kinds:
            value = obj.get(kind.name, _MISSING)
            cls = type(value)
            if cls is int and kind.lo <= value <= kind.hi:  # the usual case, quickly
                out.append(value)
            elif cls is str and kind.bits == 0 and not kind.fixed:
                out.append(value.encode())
            elif value is _MISSING or value is None:
                out.append(self._absent(kind, "absent" if value is _MISSING else "null"))
            elif kind.integer:
                out.append(self._json_int(kind, value))
            elif isinstance(value, str):
                out.append(self._sized(kind, value.encode()))
            else:  # ClickHouse keeps a number, bool, object or array as the text written
                out.append(self._sized(kind, raw_member(record, kind.name)))
        return tuple(out)

    def _json_int(self, kind: KeyKind, value: Any) -> int:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return self._wrap(kind, value, str(value))
        if isinstance(value, str):
            if value == "":
                return 0
            return self._int_text(kind, value)
        raise RecordKeyError(
            f"field {kind.name} = {json.dumps(value)[:80]} is not an integer ({kind.type})",
            field=kind.name,
        )

    # -- CSV and TSV ---------------------------------------------------------------------

    def _split(self, line: bytes) -> list[tuple[bytes, bool]]:
        return csv_fields(line) if self._csv else [(f, False) for f in line.split(b"\t")]

    def _text(self, raw: tuple[bytes, bool], kind: KeyKind | None) -> bytes | None:
        """A field's text (None for NULL): CSV unquoted (and trimmed when it was not
        quoted), TSV unescaped."""
        text, quoted = raw
        if self._csv:
            if quoted:
                return text
            text = text.strip(b" \t")
            return None if text == b"\\N" else text
        if text == b"\\N":
            return None
        return tsv_unescape(text, kind.name if kind is not None else "header")

    def _value(self, kind: KeyKind, text: bytes | None) -> int | bytes:
        if text is None:
            return self._absent(kind, "NULL")
        if not kind.integer:
            return self._sized(kind, text)
        if text == b"" and self._csv:
            return self._absent(kind, "empty")
        return self._int_text(kind, text.decode("utf-8", "replace"))

    # -- values --------------------------------------------------------------------------

    def _absent(self, kind: KeyKind, what: str) -> int | bytes:
        if kind.nullable and what != "absent":
            raise RecordKeyError(
                f"field {kind.name} is NULL ({kind.type}): a NULL sharding key has no shard",
                field=kind.name,
            )
        if kind.has_default or (kind.nullable and what == "absent"):
            raise RecordKeyError(
                f"field {kind.name} is {what}: its column's default is computed by "
                "ClickHouse, so its shard cannot be known beforehand",
                field=kind.name,
            )
        return 0 if kind.integer else self._sized(kind, b"")

    def _int_text(self, kind: KeyKind, text: str) -> int:
        if _DIGITS.match(text) is None:
            raise RecordKeyError(
                f"field {kind.name} = {text[:80]!r} is not an integer ({kind.type})",
                field=kind.name,
            )
        return self._wrap(kind, int(text), text)

    def _wrap(self, kind: KeyKind, value: int, text: str) -> int:
        if value < 0 and not kind.signed:
            raise RecordKeyError(
                f"field {kind.name} = {text[:80]} is negative in an unsigned column ({kind.type})",
                field=kind.name,
            )
        value &= (1 << kind.bits) - 1  # ClickHouse wraps what does not fit, as C does
        if kind.signed and value >= 1 << (kind.bits - 1):
            value -= 1 << kind.bits
        return value

    def _sized(self, kind: KeyKind, data: bytes) -> bytes:
        if not kind.fixed:
            return data
        if len(data) > kind.fixed:
            raise RecordKeyError(
                f"field {kind.name} has {len(data)} bytes, more than its {kind.type} holds",
                field=kind.name,
            )
        return data.ljust(kind.fixed, b"\0")
