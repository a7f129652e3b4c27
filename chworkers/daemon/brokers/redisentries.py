"""Entries of an ``XREADGROUP`` reply framed straight into a batch: the Redis source's hot
loop (docs/brokers.md, "Measured").

The reply's entries are ``[id, fields]`` pairs as hiredis parsed them (``fields`` a flat
``[name, value, ...]`` list, None for an entry deleted meanwhile). The common entry (the
records' field first, holding whole lines of a format without quoted newlines) is added
right here, its id decoded and its payload kept as it came; any other goes the general
way, as a :class:`~chworkers.daemon.brokers.assembly.Message` through
:meth:`Assembler.add <chworkers.daemon.brokers.assembly.Assembler.add>`, which frames it
the same way (a batch's bytes must not depend on which path an entry took: a rebuilt
batch takes the general one). No object per entry, no second list of them.

Entries that are all common ones whose payloads end in a newline (what a producer of
whole lines writes) are taken in runs of up to
:data:`~chworkers.daemon.brokers.assembly.RUN`, as the NATS source takes its pulls:
checked, joined and counted once, their ids decoded at once
(:meth:`Assembler.extend_lines <chworkers.daemon.brokers.assembly.Assembler.extend_lines>`),
no Python loop over them (0.7 against 1.0 us per entry of 10 JSON rows, framing and
joining included).

A reply is cut into :func:`pieces` as soon as it is read, with the garbage collector
paused (chworkers/gcpause.py): a :class:`Run` keeps no list per entry, so the reply's
lists (two per entry) are freed before a collection could traverse them; the pieces then
go into batches (:func:`extend`) with the collector on, the batches cut in between.
"""

from __future__ import annotations

import dataclasses
import operator
import time
from typing import Any

from chworkers.daemon.batcher import BatchLimits
from chworkers.daemon.brokers import assembly
from chworkers.daemon.brokers.assembly import Assembler, Assembly, Message, Poison
from chworkers.daemon.framing import count_lines

#: An entry as hiredis parsed it: ``[id, [name, value, ...] | None]``.
Entry = Any

#: An entry's id or fields; a field list's first name or value (in C, over a run).
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)

__all__ = [
    "Entry",
    "Piece",
    "Run",
    "entry_id",
    "extend",
    "message",
    "payload",
    "piece_ids",
    "pieces",
]


def payload(fields: list[bytes] | None, field: bytes) -> bytes | None:
    """The value of ``field`` among an entry's fields (None: not there, or deleted)."""
    if not fields:
        return None
    if fields[0] == field:
        return fields[1]
    return dict(zip(fields[::2], fields[1::2], strict=True)).get(field)


def message(entry: Entry, field: bytes) -> Message:
    return Message(entry[0].decode(), payload(entry[1], field))


def entry_id(entry: Entry) -> str:
    return str(entry[0].decode())


@dataclasses.dataclass(slots=True)
class Run:
    """Common entries in a row whose payloads are whole lines: their ids, payloads and
    the payloads joined (:meth:`Assembler.lines
    <chworkers.daemon.brokers.assembly.Assembler.lines>`)."""

    ids: list[str]
    payloads: list[bytes]
    records: bytes


#: A reply's entries ready for batches: a :class:`Run`, or entries framed one by one.
Piece = Run | list[Entry]


def pieces(assembler: Assembler, entries: list[Entry], field: bytes) -> list[Piece]:
    """A reply's entries cut in pieces of up to :data:`~chworkers.daemon.brokers.assembly.RUN`
    (a :class:`Run` when they are all the common entry of whole lines, else the entries
    as they came). Done while the collector is paused (chworkers/gcpause.py): a run holds
    no list per entry, so the reply's lists are freed before anything traverses them."""
    out: list[Piece] = []
    for start in range(0, len(entries), assembly.RUN):
        run = _run(assembler, entries, start, field)
        out.append(entries[start : start + assembly.RUN] if run is None else run)
    return out


def piece_ids(piece: Piece) -> list[str]:
    """The ids of a piece's entries."""
    return piece.ids if isinstance(piece, Run) else list(map(entry_id, piece))


def extend(
    assembler: Assembler, batch: Assembly, piece: Piece, limits: BatchLimits, field: bytes
) -> tuple[Piece | None, list[Poison]]:
    """Add ``piece`` to ``batch`` until it is full; returns what is left of the piece
    (None: nothing) and the poison met on the way (not in the batch: dead-lettered and
    acknowledged)."""
    if isinstance(piece, Run):
        size = batch.size
        taken = assembler.extend_lines(batch, piece.ids, piece.payloads, limits, piece.records)
        if taken >= len(piece.ids):
            return None, []
        rest = piece.records[batch.size - size :]
        return Run(piece.ids[taken:], piece.payloads[taken:], rest), []
    index, poison = _extend(assembler, batch, piece, limits, field)
    return (piece[index:] if index < len(piece) else None), poison


def _extend(
    assembler: Assembler,
    batch: Assembly,
    entries: list[Entry],
    limits: BatchLimits,
    field: bytes,
) -> tuple[int, list[Poison]]:
    """Add ``entries`` one by one to ``batch`` until it is full; returns where it stopped
    and the poison met on the way."""
    poison: list[Poison] = []
    ids, chunks = batch.ids, batch.chunks
    rows, size = batch.rows, batch.size
    max_rows, max_bytes = limits.max_rows, limits.max_bytes
    plain, limit = assembler.plain, assembler.max_record_bytes
    if not ids and entries:
        batch.started = time.monotonic()
    index, end = 0, len(entries)
    while index < end and rows < max_rows and size < max_bytes:
        raw_id, fields = entries[index]
        index += 1
        if plain and fields and fields[0] == field:
            records = fields[1]
            if records and len(records) < limit:
                if records[-1] != 10:
                    records += b"\n"
                count = records.count(b"\n")
                if records[0] == 10 or b"\n\n" in records:
                    count = count_lines(records)  # blank lines are no records
                ids.append(raw_id.decode())
                chunks.append(records)
                rows += count
                size += len(records)
                continue
        batch.rows, batch.size = rows, size
        bad = assembler.add(batch, Message(raw_id.decode(), payload(fields, field)))
        rows, size = batch.rows, batch.size
        if bad is not None:
            poison.append(bad)
    batch.rows, batch.size = rows, size
    return index, poison


def _run(assembler: Assembler, entries: list[Entry], start: int, field: bytes) -> Run | None:
    """The ids, payloads and joined records of the next ``assembly.RUN`` entries from
    ``start`` when every one is the common entry (the records' field first) and their
    payloads are whole lines as they are (:meth:`Assembler.lines`); else None: they go
    one by one."""
    if not assembler.plain or start >= len(entries):
        return None
    run = entries[start : start + assembly.RUN]
    try:
        fields = list(map(_SECOND, run))
        if set(map(_FIRST, fields)) != {field}:
            return None
        payloads = list(map(_SECOND, fields))
    except (TypeError, IndexError):  # an entry deleted meanwhile (None), no fields
        return None
    records = assembler.lines(payloads, unended=True)
    if records is None:
        return None
    # Entry ids are digits and a dash: decoded at once, split where they were joined.
    ids = b" ".join(map(_FIRST, run)).decode().split(" ")
    return Run(ids, payloads, records)
