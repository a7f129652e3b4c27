"""Broker messages to batches, the same way whoever builds them (docs/brokers.md).

A broker batch is a list of message ids and the records their payloads hold, framed in
the pipeline's format and mapped (``rename``) exactly as other sources' records are. The
bytes depend only on the payloads and their order, so a batch rebuilt from its manifest
by another daemon is the batch the first daemon built, and its token is the same.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import operator
import time
from collections.abc import Callable

from chworkers.daemon.batcher import BatchLimits
from chworkers.daemon.framing import (
    FORMATS,
    Framer,
    RecordTooLargeError,
    count_lines,
    has_blank_line,
    record_over,
)
from chworkers.errors import PoisonMessageError

#: A payload's last byte (for runs of payloads, in C).
_LAST = operator.itemgetter(-1)

#: Messages taken as one run at most (:meth:`Assembler.extend_lines`): a run is read
#: several times (checked, joined, counted), fastest while it stays in the CPU's cache
#: (~0.3 MB at 10 JSON rows per message; runs of 10,000 messages were slower than the
#: loop over messages).
RUN = 1024


@dataclasses.dataclass(slots=True)
class Message:
    """One message as the broker delivered it; ``payload`` is None when the message has
    no field with records."""

    id: str
    payload: bytes | None
    deliveries: int = 1


@dataclasses.dataclass
class Poison:
    message: Message
    error: PoisonMessageError


@dataclasses.dataclass
class Assembly:
    """A batch being put together: the ids (in order) and their framed records."""

    ids: list[str] = dataclasses.field(default_factory=list)
    chunks: list[bytes] = dataclasses.field(default_factory=list)
    rows: int = 0
    size: int = 0
    started: float = 0.0  # time.monotonic() of the first message
    #: Ids not in stream order (claimed entries among new ones): the manifest's check
    #: must find the lowest and highest itself.
    mixed: bool = False

    def full(self, limits: BatchLimits) -> bool:
        return self.rows >= limits.max_rows or self.size >= limits.max_bytes

    def due(self, limits: BatchLimits, now: float | None = None) -> bool:
        """Full, or its first message is ``max_delay`` old."""
        if not self.ids:
            return False
        now = time.monotonic() if now is None else now
        return self.full(limits) or now - self.started >= limits.max_delay

    def payload(self) -> bytes:
        return b"".join(self.chunks)


class Assembler:
    """Frames messages' payloads into records (one :class:`Framer` check per message:
    a message holds whole records, the last newline optional)."""

    def __init__(
        self,
        format: str,
        *,
        max_record_bytes: int = 16 * 1024 * 1024,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.format = format
        self.max_record_bytes = max_record_bytes
        self.transform = transform
        Framer(format)  # validate the format now
        self._quoted = FORMATS[format]
        #: Records are whole lines (no quoted newlines): a payload needs no Framer.
        self.plain = not self._quoted

    def frame(self, message: Message) -> tuple[bytes, int]:
        """The message's records and their count; raises :class:`PoisonMessageError`."""
        payload = message.payload
        if payload is None:
            raise PoisonMessageError(f"message {message.id} has no payload field")
        if not payload:
            return b"", 0
        if not payload.endswith(b"\n"):
            payload += b"\n"
        if not self._quoted and len(payload) <= self.max_record_bytes:
            # Whole lines: what a Framer would return, without making one per message.
            return payload, count_lines(payload)
        framer = Framer(self.format, max_record_bytes=self.max_record_bytes)
        try:
            records, rows = framer.feed(payload)
        except RecordTooLargeError as exc:
            raise PoisonMessageError(f"message {message.id}: {exc}") from exc
        if framer.pending_bytes:
            raise PoisonMessageError(
                f"message {message.id} ends inside a record (an unclosed quote?)"
            )
        # A record that ended in the message is not checked by the framer, only one that
        # does not end: a message of one giant record would go into memory whole.
        if longest := record_over(records, self.max_record_bytes, quoted=self._quoted):
            raise PoisonMessageError(
                f"message {message.id}: a record of {longest} bytes (limit {self.max_record_bytes})"
            )
        return records, rows

    def payload(self, batch: Assembly) -> bytes:
        """The bytes to insert: the records, mapped (``rename``) once for the batch."""
        records = batch.payload()
        if records and self.transform is not None:
            records = self.transform(records)
        return records

    def add(self, batch: Assembly, message: Message) -> Poison | None:
        """Add a message's records to ``batch``; a poison message is returned instead."""
        payload = message.payload
        if payload and not self._quoted and len(payload) < self.max_record_bytes:
            # The common case, inline: a message of whole lines (the hot loop).
            records = payload if payload[-1] == 10 else payload + b"\n"
            rows = records.count(b"\n")
            if b"\n\n" in records or records[0] == 10:
                rows = count_lines(records)
        else:
            try:
                records, rows = self.frame(message)
            except PoisonMessageError as exc:
                return Poison(message, exc)
        if not batch.ids:
            batch.started = time.monotonic()
        batch.ids.append(message.id)
        if rows:
            batch.chunks.append(records)
            batch.rows += rows
            batch.size += len(records)
        return None

    def extend(
        self, batch: Assembly, messages: list[Message], start: int, limits: BatchLimits
    ) -> tuple[int, list[Poison]]:
        """Add ``messages[start:]`` until ``batch`` is full; returns where it stopped and
        the poison met on the way (the hot loop of a source: :meth:`add` inlined)."""
        poison: list[Poison] = []
        ids, chunks = batch.ids, batch.chunks
        rows, size = batch.rows, batch.size
        max_rows, max_bytes = limits.max_rows, limits.max_bytes
        plain = not self._quoted
        limit = self.max_record_bytes
        if not ids and start < len(messages):
            batch.started = time.monotonic()
        index = start
        for index in range(start, len(messages)):
            if rows >= max_rows or size >= max_bytes:
                break
            message = messages[index]
            payload = message.payload
            if plain and payload and len(payload) < limit:
                records = payload if payload[-1] == 10 else payload + b"\n"
                count = records.count(b"\n")
                if b"\n\n" in records or records[0] == 10:
                    count = count_lines(records)
            else:
                try:
                    records, count = self.frame(message)
                except PoisonMessageError as exc:
                    poison.append(Poison(message, exc))
                    continue
            ids.append(message.id)
            if count:
                chunks.append(records)
                rows += count
                size += len(records)
        else:
            index = len(messages)
        batch.rows, batch.size = rows, size
        return index, poison

    def whole_lines(self, payloads: list[bytes]) -> bool:
        """Whether :meth:`extend_lines` can take ``payloads`` as they are: whole lines of
        a format without quoting, none of them empty or with a blank line, each ending
        in a newline and under ``max_record_bytes`` (what :meth:`extend` checks message
        by message, for a run of messages at once)."""
        return self.lines(payloads) is not None

    def lines(self, payloads: list[bytes], *, unended: bool = False) -> bytes | None:
        """The records of ``payloads`` joined, when :meth:`whole_lines` holds (else None):
        for :meth:`extend_lines`, which then need not join them again. ``unended``:
        payloads none of which ends in a newline are taken too, a newline after each (as
        :meth:`extend` gives each one: a producer that writes one record per message, or
        lines joined without the last newline)."""
        if self._quoted or not payloads:
            return None
        try:
            ended = bytes(map(_LAST, payloads)).count(10)
        except IndexError:  # an empty one
            return None
        if ended == len(payloads):
            joined = b"".join(payloads)
        elif unended and not ended:
            joined = b"\n".join(payloads) + b"\n"
        else:
            return None  # some end in a newline and some not: extend() adds the missing
        limit = self.max_record_bytes
        if len(joined) >= limit and max(map(len, payloads)) >= limit:
            return None  # (each is shorter than the limit when they all are together)
        if has_blank_line(joined):
            return None
        return joined

    def extend_lines(
        self,
        batch: Assembly,
        ids: list[str],
        payloads: list[bytes],
        limits: BatchLimits,
        records: bytes | None = None,
    ) -> int:
        """Add messages until ``batch`` is full, as :meth:`extend` does (the message that
        fills it included), for payloads :meth:`whole_lines` accepted: their records are
        the payloads as they are, counted and joined once for the run (``records``: that
        join, when :meth:`lines` made it already; payloads that do not end in a newline,
        which ``lines(unended=True)`` took, get one each). Returns how many were added."""
        rows_room = limits.max_rows - batch.rows
        bytes_room = limits.max_bytes - batch.size
        if not ids or rows_room <= 0 or bytes_room <= 0:
            return 0
        gap = int(payloads[-1][-1] != 10)  # the newline after each payload: added, or not
        if records is None:
            records = b"\n".join(payloads) + b"\n" if gap else b"".join(payloads)
        rows = records.count(b"\n")
        taken = len(ids)
        if rows >= rows_room or len(records) >= bytes_room:
            # Up to the first message after which the batch is full.
            ends = list(itertools.accumulate(map(len, payloads)))
            if gap:
                ends = list(map(operator.add, ends, range(1, len(ends) + 1)))
            taken = 1 + min(
                _filling(records, payloads, ends, rows, rows_room, gap),
                bisect.bisect_left(ends, bytes_room),
            )
            if taken < len(ids):
                rows = records.count(b"\n", 0, ends[taken - 1])
                records = records[: ends[taken - 1]]
            else:
                taken = len(ids)
        if not batch.ids:
            batch.started = time.monotonic()
        batch.ids += ids if taken == len(ids) else ids[:taken]
        batch.chunks.append(records)
        batch.rows += rows
        batch.size += len(records)
        return taken

    def rebuild(
        self, ids: list[str], messages: dict[str, Message]
    ) -> tuple[Assembly, list[Poison]]:
        """The batch of a manifest: its ids in order, those the stream still has."""
        batch = Assembly()
        poison: list[Poison] = []
        for message_id in ids:
            message = messages.get(message_id)
            if message is None:
                continue
            bad = self.add(batch, message)
            if bad is not None:
                poison.append(bad)
        return batch, poison


def _filling(
    records: bytes, payloads: list[bytes], ends: list[int], rows: int, room: int, gap: int
) -> int:
    """The index of the payload whose lines bring the lines of ``payloads`` (joined:
    ``records``, ``rows`` lines in all; ``ends``: where each payload ends in them; ``gap``:
    1 when a newline was added after each) to ``room``, or ``len(payloads)`` if they all
    fall short. Guessed from the lines per payload on average, then counted: one count of
    the bytes up to the guess, and one per payload the guess was off by (none when the
    payloads hold as many lines each)."""
    if rows < room:
        return len(payloads)
    index = min(len(payloads) - 1, max(0, -(-room * len(payloads) // rows) - 1))
    lines = records.count(b"\n", 0, ends[index])  # through payloads[index]
    while lines < room:
        index += 1
        lines += payloads[index].count(b"\n") + gap
    while index > 0 and lines - (last := payloads[index].count(b"\n") + gap) >= room:
        lines -= last
        index -= 1
    return index


__all__ = ["RUN", "Assembler", "Assembly", "Message", "Poison"]
