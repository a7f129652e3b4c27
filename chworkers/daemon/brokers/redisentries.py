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
"""

from __future__ import annotations

import time
from typing import Any

from chworkers.daemon.batcher import BatchLimits
from chworkers.daemon.brokers.assembly import Assembler, Assembly, Message, Poison
from chworkers.daemon.framing import count_lines

#: An entry as hiredis parsed it: ``[id, [name, value, ...] | None]``.
Entry = Any

__all__ = ["Entry", "entry_id", "extend", "message", "payload"]


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


def extend(
    assembler: Assembler,
    batch: Assembly,
    entries: list[Entry],
    start: int,
    limits: BatchLimits,
    field: bytes,
) -> tuple[int, list[Poison]]:
    """Add ``entries[start:]`` to ``batch`` until it is full; returns where it stopped and
    the poison met on the way (not in the batch: dead-lettered and acknowledged)."""
    poison: list[Poison] = []
    ids, chunks = batch.ids, batch.chunks
    rows, size = batch.rows, batch.size
    max_rows, max_bytes = limits.max_rows, limits.max_bytes
    plain, limit = assembler.plain, assembler.max_record_bytes
    if not ids and start < len(entries):
        batch.started = time.monotonic()
    index, end = start, len(entries)
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
