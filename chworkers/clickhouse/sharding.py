"""Sharding keys: which shard a row goes to, exactly as a ``Distributed`` table decides.

A :class:`ShardingKey` is parsed from the ClickHouse expression a ``Distributed`` table
would be created with (``sipHash64(user_id)``, ``intHash64(id)``, ``user_id``, ``rand()``);
:meth:`ShardingKey.bind` binds it to the table's column types (``sipHash64`` of a UInt64
hashes other bytes than of a String), and the bound key evaluates a batch column-wise to
the UInt64 keys ClickHouse would compute. :class:`ShardRouter` maps keys to shards as
ClickHouse's ``createBlockSelector`` does: the cluster's weights lay out ``total weight``
consecutive slots in shard order (shard 0 takes the first ``weight_0`` slots, and so on),
and a key goes to the shard of slot ``key % total weight``. A signed plain key is taken
as its unsigned twin of the same width first (Int8 -1 is 255), as ClickHouse does.

Supported, each matched exactly (tests/test_sharding.py proves it against ClickHouse's
own evaluation and a real ``Distributed`` table in chDB):

- a plain integer column: Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64;
- ``sipHash64(a, ...)``, ``cityHash64(a, ...)`` and ``xxHash64(a, ...)`` over those
  integers, String and FixedString(N) columns (:mod:`chworkers.clickhouse.keyhash`);
- ``intHash64(a)`` over an integer column;
- ``rand()`` (or ``random``): whole batches to a random shard, in proportion to the
  weights (a Distributed table picks per row; any shard is right for such a table).

LowCardinality(T) is treated as T. Nullable columns are refused, as a Distributed table
refuses a Nullable key.
"""

from __future__ import annotations

import hashlib
import random as _random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from chworkers.clickhouse.cluster import Cluster
from chworkers.clickhouse.keyhash import (
    U64,
    cityhash64_bytes,
    combine_siphash,
    hash128_to_64,
    int_hash64,
    siphash64_bytes,
    siphash64_ints,
    siphash64_strings,
    xxhash64_bytes,
    xxhash64_ints,
)
from chworkers.errors import BatchError, ConfigError
from chworkers.wording import article

#: A one-dimensional array of shard indexes or row positions.
Indexes = np.ndarray[tuple[int], np.dtype[np.intp]]

__all__ = ["BoundShardingKey", "ShardRouter", "ShardingKey", "shard_indexes"]

#: Integer types: name -> (width in bytes, signed).
INTEGER_TYPES = {
    f"{'U' if not signed else ''}Int{8 * width}": (width, signed)
    for width in (1, 2, 4, 8)
    for signed in (True, False)
}
_FUNCTIONS = {"sipHash64": "any", "xxHash64": "any", "cityHash64": "any", "intHash64": "integer"}
_RANDOM = ("rand()", "random", "rand")
SUPPORTED = (
    "a plain integer column (Int8..Int64, UInt8..UInt64); sipHash64(col, ...), "
    "cityHash64(col, ...) or xxHash64(col, ...) over integer, String and FixedString(N) "
    "columns; intHash64(col) over an integer column; or rand()"
)
_IDENT = r"(?:[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)+`)"
_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(\s*(.*?)\s*\)\s*$", re.S)
_ARG = re.compile(rf"^\s*({_IDENT})\s*$", re.S)


def _unquote(ident: str) -> str:
    if ident.startswith("`"):
        return re.sub(r"\\(.)", r"\1", ident[1:-1])
    return ident


def _refuse(expression: str, why: str) -> ConfigError:
    return ConfigError(
        f"sharding_key {expression!r}: {why}; supported: {SUPPORTED}",
        key="sharding_key",
        value=expression,
        expected=SUPPORTED,
    )


@dataclass(frozen=True)
class ShardingKey:
    """A parsed sharding key expression; ``function`` is ``None`` for a plain column."""

    expression: str
    function: str | None
    fields: tuple[str, ...]

    @property
    def is_random(self) -> bool:
        """Whether rows go to a random shard (``rand()``): the key reads no field."""
        return self.function == "rand"

    def __str__(self) -> str:
        return self.expression

    @classmethod
    def parse(cls, expression: str | ShardingKey) -> ShardingKey:
        """Parse ``expression``, or raise :class:`ConfigError` saying what is supported."""
        if isinstance(expression, ShardingKey):
            return expression
        if not isinstance(expression, str):
            raise _refuse(repr(expression), "not a string")
        text = expression.strip()
        if text.lower() in _RANDOM:
            return cls(text, "rand", ())
        plain = _ARG.match(text)
        if plain:
            return cls(text, None, (_unquote(plain.group(1)),))
        call = _CALL.match(text)
        if not call:
            raise _refuse(expression, "not a column name or a function call of columns")
        name, args_text = call.groups()
        if name not in _FUNCTIONS:
            close = [f for f in _FUNCTIONS if f.lower() == name.lower()]
            hint = f" (ClickHouse spells it {close[0]})" if close else ""
            raise _refuse(expression, f"function {name} is not supported{hint}")
        args = [a for a in _split_args(args_text)]
        if not args or any(not _ARG.match(a) for a in args):
            raise _refuse(expression, f"{name}'s arguments must be column names")
        fields = tuple(_unquote(a.strip()) for a in args)
        if name == "intHash64" and len(fields) != 1:
            raise _refuse(expression, "intHash64 takes one argument")
        return cls(text, name, fields)

    def bind(self, column_types: Mapping[str, str]) -> BoundShardingKey:
        """Bind to the table's columns (name -> ClickHouse type, e.g. from
        ``DESCRIBE TABLE``). Raises :class:`ConfigError` for a missing column or a type
        the expression cannot take."""
        types = []
        for field in self.fields:
            if field not in column_types:
                raise _refuse(
                    self.expression,
                    f"the table has no column {field!r} (its columns: "
                    f"{', '.join(column_types) or 'none'})",
                )
            kind = _key_type(column_types[field])
            if kind is None or (self.function in (None, "intHash64") and kind[0] != "int"):
                want = (
                    "an integer type"
                    if self.function in (None, "intHash64")
                    else "an integer, String or FixedString(N) type"
                )
                raise _refuse(
                    self.expression,
                    f"column {field!r} is {column_types[field]}, not {want}",
                )
            types.append(column_types[field])
        return BoundShardingKey(self, tuple(types))


def _split_args(text: str) -> list[str]:
    parts, depth, start, quoted = [], 0, 0, False
    for i, ch in enumerate(text):
        if ch == "`":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()] if text.strip() else []


def _key_type(type_name: str) -> tuple[str, int, bool] | None:
    """``("int", width, signed)``, ``("string", 0, False)``, ``("fixed", n, False)`` or
    ``None`` for a type a sharding key cannot read."""
    name = re.sub(r"\s+", "", type_name)
    low = re.fullmatch(r"LowCardinality\((.*)\)", name)
    if low:
        name = low.group(1)
    if name in INTEGER_TYPES:
        width, signed = INTEGER_TYPES[name]
        return ("int", width, signed)
    if name == "String":
        return ("string", 0, False)
    fixed = re.fullmatch(r"FixedString\((\d+)\)", name)
    if fixed:
        return ("fixed", int(fixed.group(1)), False)
    return None


@dataclass(frozen=True)
class BoundShardingKey:
    """A :class:`ShardingKey` bound to its columns' types; evaluates batches."""

    key: ShardingKey
    types: tuple[str, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return self.key.fields

    @property
    def is_random(self) -> bool:
        return self.key.is_random

    def evaluate(self, columns: Sequence[Sequence[object]]) -> U64:
        """The UInt64 keys of a batch given column-wise: one sequence of values per field,
        in :attr:`fields` order. Raises :class:`BatchError` naming the row and the field
        of a value the column's type cannot hold."""
        if self.key.is_random:
            raise ValueError("a random sharding key has no keys to evaluate")
        if len(columns) != len(self.fields):
            raise ValueError(f"expected {len(self.fields)} columns, got {len(columns)}")
        hashes: U64 | None = None
        for field, type_name, values in zip(self.fields, self.types, columns, strict=True):
            kind = _key_type(type_name)
            assert kind is not None
            if kind[0] == "int":
                bits = _int_bits(field, type_name, values, kind[1], kind[2])
                if self.key.function is None:
                    return bits & np.uint64((1 << (8 * kind[1])) - 1)
                if self.key.function == "intHash64":
                    return int_hash64(bits)
                if self.key.function == "cityHash64":  # numbers: intHash64, zero-extended
                    h = int_hash64(bits & np.uint64((1 << (8 * kind[1])) - 1))
                elif self.key.function == "xxHash64":
                    h = xxhash64_ints(bits, kind[1])
                else:
                    h = siphash64_ints(bits, kind[1])
            elif (
                self.key.function == "sipHash64"
                and kind[0] == "string"
                and set(map(type, values)) <= {str}
            ):  # the common case, with no per-string Python work
                h = siphash64_strings(values)  # type: ignore[arg-type]
            else:
                raw = _byte_values(field, type_name, values, kind)
                h = (
                    cityhash64_bytes(raw)
                    if self.key.function == "cityHash64"
                    else xxhash64_bytes(raw)
                    if self.key.function == "xxHash64"
                    else siphash64_bytes(raw)
                )
            if hashes is None:
                hashes = h
            elif self.key.function == "sipHash64":
                hashes = combine_siphash(hashes, h)
            else:
                hashes = hash128_to_64(hashes, h)
        assert hashes is not None
        return hashes

    def evaluate_rows(
        self,
        rows: Sequence[Mapping[str, object]] | Sequence[Sequence[object]],
        column_names: Sequence[str] | None = None,
    ) -> U64:
        """:meth:`evaluate` for rows: mappings of field names, or sequences whose values
        are in ``column_names`` order."""
        columns: list[list[object]] = []
        for field in self.fields:
            if column_names is None:
                try:
                    columns.append([row[field] for row in rows])  # type: ignore[call-overload]
                except (KeyError, TypeError):
                    bad = next(i for i, r in enumerate(rows) if not _has(r, field))
                    raise BatchError(
                        f"row {bad}: no value for the sharding key's field {field!r}",
                        row=bad,
                        reason="missing sharding key field",
                    ) from None
            else:
                if field not in column_names:
                    raise BatchError(
                        f"the batch has no column {field!r} for sharding key "
                        f"{self.key.expression!r}",
                        reason="missing sharding key field",
                    )
                at = list(column_names).index(field)
                columns.append([row[at] for row in rows])  # type: ignore[index]
        return self.evaluate(columns)


def _has(row: Any, field: str) -> bool:
    try:
        row[field]
    except (KeyError, TypeError, IndexError):
        return False
    return True


def _bad(field: str, type_name: str, row: int, value: object, why: str) -> BatchError:
    return BatchError(
        f"row {row}: sharding key field {field!r} = {value!r} {why} (column type {type_name})",
        row=row,
        reason="bad sharding key value",
    )


def _int_bits(
    field: str, type_name: str, values: Sequence[object], width: int, signed: bool
) -> U64:
    """The values as UInt64 bits (signed ones sign-extended), range-checked."""
    for i, v in enumerate(values):
        if type(v) is not int and not isinstance(v, int | np.integer):
            why = "is NULL" if v is None else f"is {article(type(v).__name__)}, not an integer"
            raise _bad(field, type_name, i, v, why)
    bits = 8 * width
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    try:
        arr: npt.NDArray[Any] = np.asarray(values, dtype=np.int64 if signed else np.uint64)
    except OverflowError:
        arr = np.empty(0, dtype=np.int64)
    if len(arr) != len(values) or (len(arr) and (int(arr.min()) < lo or int(arr.max()) > hi)):
        for i, v in enumerate(values):
            if not lo <= int(v) <= hi:  # type: ignore[call-overload]
                raise _bad(field, type_name, i, v, f"is out of range [{lo}, {hi}]")
    return arr.view(np.uint64) if signed else arr.astype(np.uint64, copy=False)


def _byte_values(
    field: str, type_name: str, values: Sequence[object], kind: tuple[str, int, bool]
) -> list[bytes]:
    size = kind[1]
    if kind[0] == "string" and set(map(type, values)) <= {str}:  # the common case, in C
        return [v.encode("utf-8") for v in values]  # type: ignore[attr-defined]
    out: list[bytes] = []
    for i, v in enumerate(values):
        if isinstance(v, str):
            b = v.encode("utf-8")
        elif isinstance(v, bytes | bytearray | memoryview):
            b = bytes(v)
        else:
            why = "is NULL" if v is None else f"is {article(type(v).__name__)}, not a string"
            raise _bad(field, type_name, i, v, why)
        if kind[0] == "fixed":
            if len(b) > size:
                raise _bad(field, type_name, i, v, f"is {len(b)} bytes, longer than {size}")
            b = b + bytes(size - len(b))
        out.append(b)
    return out


class ShardRouter:
    """Maps UInt64 keys to shard indexes as ClickHouse's Distributed table does."""

    def __init__(self, cluster: Cluster | Sequence[int]) -> None:
        weights = cluster.weights if isinstance(cluster, Cluster) else tuple(cluster)
        if not weights or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in weights
        ):
            raise ConfigError(
                f"shard weights {weights!r} are not positive integers",
                key="weights",
                value=weights,
                expected="one positive integer per shard",
            )
        self.weights = weights
        self.total_weight = sum(weights)
        #: Slot -> shard index: ``weights[i]`` consecutive slots for shard i, in order.
        self.slots = np.repeat(np.arange(len(weights), dtype=np.intp), weights)

    def __repr__(self) -> str:
        return f"ShardRouter(weights={list(self.weights)})"

    def route(self, keys: U64 | Sequence[int]) -> Indexes:
        """The shard index of each key (an array)."""
        arr = np.asarray(keys, dtype=np.uint64)
        return self.slots[arr % np.uint64(self.total_weight)]  # type: ignore[no-any-return]

    def indexes(self, keys: U64 | Sequence[int]) -> list[int]:
        """The shard index of each key."""
        return self.route(keys).tolist()

    def split(self, keys: U64 | Sequence[int]) -> list[Indexes]:
        """For each shard, the positions (ascending) of the keys that go to it."""
        shards = self.route(keys)
        order = np.argsort(shards, kind="stable")
        bounds = np.searchsorted(shards[order], np.arange(len(self.weights) + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(len(self.weights))]

    def random_shard(self, rng: _random.Random | None = None) -> int:
        """A shard for a whole batch under a random key, in proportion to the weights."""
        slot = (rng or _random).randrange(self.total_weight)
        return int(self.slots[slot])

    def token_shard(self, token: str) -> int:
        """The shard, by weight, of a whole batch under a random key, from its token: a
        batch sent again (or rebuilt from a broker's manifest) goes where it went."""
        digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
        return int(self.slots[int.from_bytes(digest, "little") % self.total_weight])


def shard_indexes(keys: U64 | Sequence[int], cluster: Cluster | Sequence[int]) -> list[int]:
    """The shard index of each UInt64 key in ``cluster`` (or for these weights)."""
    return ShardRouter(cluster).indexes(keys)
