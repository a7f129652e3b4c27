"""The table columns a sharding key reads, and how each one's values are read.

The daemon routes rows by keys over integer columns (``Int8`` .. ``UInt256``, wrapped to
their width as ClickHouse wraps them) and string columns (``String``,
``FixedString(N)``, ``LowCardinality(String)``), ``Nullable`` or not; :func:`column_kind`
says how, or raises :class:`~chworkers.errors.ConfigError` for another type.
"""

from __future__ import annotations

import dataclasses
import functools
import re

from chworkers.errors import ConfigError

__all__ = ["NOT_INSERTED", "Column", "KeyKind", "column_kind"]

_INT_TYPE = re.compile(r"^(U?)Int(8|16|32|64|128|256)$")
_FIXED = re.compile(r"^FixedString\((\d+)\)$")
#: Columns that an insert cannot give a value (computed, or never stored).
NOT_INSERTED = frozenset({"MATERIALIZED", "ALIAS", "EPHEMERAL"})


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column as ``system.columns`` describes it."""

    name: str
    type: str
    #: ``DEFAULT``, ``MATERIALIZED``, ``ALIAS``, ``EPHEMERAL`` or "" (the type's default).
    default_kind: str = ""


@dataclasses.dataclass(frozen=True)
class KeyKind:
    """How one key field's text becomes its value."""

    name: str
    type: str
    bits: int = 0  # integers: the width; 0 for strings
    signed: bool = False
    fixed: int = 0  # FixedString(N): N
    nullable: bool = False
    has_default: bool = False  # a DEFAULT expression fills an absent field

    @property
    def integer(self) -> bool:
        return self.bits > 0

    @functools.cached_property
    def lo(self) -> int:
        """The least value the column holds as it is (strings: none)."""
        if not self.bits:
            return 1
        return -(1 << (self.bits - 1)) if self.signed else 0

    @functools.cached_property
    def hi(self) -> int:
        """The greatest value the column holds as it is (strings: none)."""
        if not self.bits:
            return 0
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


def column_kind(column: Column) -> KeyKind:
    """How a key column's values are read; :class:`ConfigError` for a type the key
    cannot be read from (the daemon only routes integer and string key columns)."""
    tp = column.type.strip()
    nullable = False
    for wrapper in ("LowCardinality(", "Nullable("):
        if tp.startswith(wrapper) and tp.endswith(")"):
            nullable = nullable or wrapper == "Nullable("
            tp = tp[len(wrapper) : -1].strip()
    has_default = column.default_kind == "DEFAULT"
    if (m := _INT_TYPE.match(tp)) is not None:
        return KeyKind(
            column.name, column.type, int(m.group(2)), not m.group(1), 0, nullable, has_default
        )
    if tp == "String":
        return KeyKind(column.name, column.type, nullable=nullable, has_default=has_default)
    if (m := _FIXED.match(tp)) is not None:
        return KeyKind(
            column.name,
            column.type,
            fixed=int(m.group(1)),
            nullable=nullable,
            has_default=has_default,
        )
    raise ConfigError(
        f"column {column.name} is {column.type}: the daemon reads sharding-key fields of "
        "integer (Int8 .. UInt256) and string (String, FixedString, LowCardinality) columns",
        key="sharding_key",
        value=column.type,
        expected="a key over integer or string columns",
    )
