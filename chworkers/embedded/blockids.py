"""The block ids chDB's engine gives inserts, and the ones a table's log holds now.

ClickHouse (26.x) gives every inserted block one "unified" id, the same for a
synchronous insert and an asynchronous entry (``DeduplicationInfo::getBlockUnifiedHash``
in ``src/Interpreters/InsertDeduplication.cpp``): with an ``insert_deduplication_token``
it is ``SipHash128("user-token-<token>:source-id-<root>:source-number-<n>")``, the block
number ``n`` 0 for the first (usually only) block of an insert and always 0 for an
asynchronous entry; the block id in the table's log is ``<partition id>_<lo>_<hi>`` of
that hash. In chDB the root is ``empty``: a synchronous insert with token ``abc`` is
logged as ``all_2999675849321409816_16143690475548020418`` (the test checks it against
the engine). :func:`token_hash` computes the ``<lo>_<hi>`` part, so the endpoint's
asynchronous entries and chDB's synchronous inserts name a token alike.

A non-replicated MergeTree table keeps its ids in ``deduplication_logs/`` under its data
directory: lines ``1<TAB>part<TAB>block id`` when a part is added, ``2<TAB>...`` when
it is dropped (``TRUNCATE``, ``DROP PARTITION``), the last ``window`` added ones kept
(``MergeTreeDeduplicationLog``). :func:`live_hashes` reads them as the engine has them.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)

_MASK = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def sip_hash128(data: bytes) -> tuple[int, int]:
    """ClickHouse's ``SipHash`` (keys 0) ``get128()``: its two 64-bit halves.

    SipHash-2-4, finished as ClickHouse's non-reference 128-bit variant (``v2 ^= 0xff``,
    halves ``v0 ^ v1`` and ``v2 ^ v3``), as ``sipHash128()`` in SQL.
    """
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _MASK
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _MASK
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _MASK
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _MASK
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    full = len(data) - len(data) % 8
    for at in range(0, full, 8):
        word = int.from_bytes(data[at : at + 8], "little")
        v3 ^= word
        rounds(2)
        v0 ^= word
    last = int.from_bytes(data[full:], "little") | ((len(data) & 0xFF) << 56)
    v3 ^= last
    rounds(2)
    v0 ^= last
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1, v2 ^ v3


def token_hash(token: str) -> str:
    """``<lo>_<hi>`` of the block id an insert with ``token`` gets (its first block)."""
    text = f"user-token-{token}:source-id-empty:source-number-0"
    lo, hi = sip_hash128(text.encode("utf-8", "surrogateescape"))
    return f"{lo}_{hi}"


def data_hash(lo: int, hi: int) -> str:
    """``<lo>_<hi>`` of the block id an insert without a token gets, from its block's
    data hash (``SipHash128`` of its columns' values, column by column, see
    :func:`data_hash_sql`): ``user-token-`` gives way to ``<lo>_<hi>`` of that hash."""
    text = f"{lo}_{hi}:source-id-empty:source-number-0"
    a, b = sip_hash128(text.encode())
    return f"{a}_{b}"


_WIDTHS = {
    "UInt8": 1, "Int8": 1, "Bool": 1, "Enum8": 1,
    "UInt16": 2, "Int16": 2, "Date": 2, "Enum16": 2,
    "UInt32": 4, "Int32": 4, "Float32": 4, "Date32": 4, "DateTime": 4, "Decimal32": 4,
    "UInt64": 8, "Int64": 8, "Float64": 8, "DateTime64": 8, "Decimal64": 8,
    "UInt128": 16, "Int128": 16, "Decimal128": 16,
    "UInt256": 32, "Int256": 32, "Decimal256": 32,
}  # fmt: skip


def fixed_width(type_: str) -> int | None:
    """How many bytes a value of ``type_`` is in a column (its data hashed as they
    are), or None for a type whose hash the endpoint does not reproduce (String,
    Nullable, Array, LowCardinality, ...)."""
    name, _, args = type_.partition("(")
    if name == "Decimal":
        precision = int(args.split(",")[0]) if args.split(",")[0].strip().isdigit() else 0
        return next((w for p, w in ((9, 4), (18, 8), (38, 16), (76, 32)) if precision <= p), None)
    return _WIDTHS.get(name)


def data_hashes_sql(table: str, columns: list[tuple[str, int]], ends: list[int]) -> str:
    """A query of the data hash, as ClickHouse computes a block's
    (``DeduplicationInfo::calculateDataHashes``: each column's
    ``updateHashWithValueRange`` into one ``SipHash``, a fixed-width column's values
    being their bytes), of each run of ``table``'s rows that ends before ``ends[i]``:
    rows ``(i, hex of the hash)``. ``columns`` are (quoted name, width), in the block's
    order; the rows are read in order (one thread)."""
    parts = ", ".join(
        f"unhex(arrayStringConcat(groupArray(hex(reinterpret({name}, 'FixedString({width})')))))"
        for name, width in columns
    )
    if len(ends) == 1:  # the whole table: no grouping (half the CPU of a query)
        return (
            f"SELECT 0, hex(sipHash128(concat({parts}, ''))) FROM {table} SETTINGS max_threads = 1"
        )
    names = ", ".join(name for name, _ in columns)
    bounds = "[" + ", ".join(str(e) for e in ends) + "]"
    return (
        f"SELECT arrayFirstIndex(e -> _rn < e, {bounds}) - 1 AS _entry, "
        f"hex(sipHash128(concat({parts}, ''))) "
        f"FROM (SELECT {names}, rowNumberInAllBlocks() AS _rn FROM {table}) "
        "GROUP BY _entry ORDER BY _entry SETTINGS max_threads = 1"
    )


def _hash_of(block_id: str) -> str:
    """``<lo>_<hi>`` of a logged block id ``<partition>_<lo>_<hi>``."""
    parts = block_id.rsplit("_", 2)
    return f"{parts[1]}_{parts[2]}" if len(parts) == 3 else block_id


def _number(path: Path) -> int:
    tail = path.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _records(table_dir: Path) -> list[tuple[str, str]]:
    """``(op, block id)`` of chDB's log of the table, oldest first (op ``1`` added,
    ``2`` dropped); empty if it keeps none."""
    logs = table_dir / "deduplication_logs"
    try:
        files = list(logs.glob("deduplication_log_*.txt"))
    except OSError:
        return []

    records = []
    for path in sorted(files, key=_number):
        try:
            text = path.read_text(errors="replace")
        except OSError:  # rotated away while we read: what is left still counts
            continue
        for line in text.splitlines():
            fields = line.split("\t")
            if len(fields) >= 3 and fields[0] in ("1", "2"):
                records.append((fields[0], fields[2]))  # a shorter line: being written
    return records


class _Live:
    """chDB's log of one table as read so far: the live block ids, and how many bytes
    of each of its files (by name, in order) were read (whole lines)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.read: dict[str, int] = {}
        self.live: OrderedDict[str, None] = OrderedDict()


_live: dict[Path, _Live] = {}
_live_lock = threading.Lock()


def live_hashes(table_dir: Path, window: int) -> set[str]:
    """The ``<lo>_<hi>`` of the block ids chDB's log of the table holds now: added, not
    dropped since, the last ``window`` (any partition). Empty if it keeps none.

    Read incrementally: what the files gained since the last call (a flush reads it
    each time, and the log holds up to ``window`` lines); read again whole once a file
    was rotated away or rewritten."""
    try:
        files = sorted(
            (table_dir / "deduplication_logs").glob("deduplication_log_*.txt"), key=_number
        )
        sizes = [(path, path.stat().st_size) for path in files]
    except OSError:  # rotated away meanwhile: read it all next time
        with _live_lock:
            _live.pop(table_dir, None)
        return _live_from(_records(table_dir), window)
    with _live_lock:
        state = _live.get(table_dir)
        names = [path.name for path, _ in sizes]
        if (
            state is None
            or state.window != window
            or list(state.read) != names[: len(state.read)]
            or any(size < state.read.get(path.name, 0) for path, size in sizes)
        ):
            state = _Live(window)
        for path, size in sizes:
            start = state.read.get(path.name, 0)
            if size > start:
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read(size - start)
                whole = data[: data.rfind(b"\n") + 1]  # a last line being written waits
                for line in whole.decode(errors="replace").splitlines():
                    fields = line.split("\t")
                    if len(fields) >= 3 and fields[0] in ("1", "2"):
                        _apply(state.live, fields[0], fields[2], window)
                start += len(whole)
            state.read[path.name] = start
        if len(_live) > 10_000:
            _live.clear()
        _live[table_dir] = state
        return {_hash_of(block_id) for block_id in state.live}


def _live_from(records: list[tuple[str, str]], window: int) -> set[str]:
    live: OrderedDict[str, None] = OrderedDict()
    for op, block_id in records:
        _apply(live, op, block_id, window)
    return {_hash_of(block_id) for block_id in live}


def _apply(live: OrderedDict[str, None], op: str, block_id: str, window: int) -> None:
    if op == "1":
        live[block_id] = None
        live.move_to_end(block_id)
        while len(live) > window > 0:
            live.popitem(last=False)
    else:
        live.pop(block_id, None)


def live_partitions(table_dir: Path, window: int, hash_: str) -> set[str]:
    """The partitions whose block id ``<partition>_<hash_>`` chDB's log of the table
    holds now (added, not dropped since, within the last ``window``): those an insert
    with that hash wrote."""
    live: OrderedDict[str, None] = OrderedDict()
    for op, block_id in _records(table_dir):
        _apply(live, op, block_id, window)
    suffix = "_" + hash_
    return {b[: -len(suffix)] for b in live if b.endswith(suffix)}


def dropped_hashes(table_dir: Path) -> set[str]:
    """The ``<lo>_<hi>`` whose every block id in chDB's log of the table was dropped
    (a part of it was, and none is left): the inserts whose parts are all gone."""
    records = _records(table_dir)
    live: dict[str, None] = {}
    dropped: set[str] = set()
    for op, block_id in records:
        if op == "1":
            live[block_id] = None
        elif op == "2" and block_id in live:
            del live[block_id]
            dropped.add(_hash_of(block_id))
    return dropped - {_hash_of(b) for b in live}
