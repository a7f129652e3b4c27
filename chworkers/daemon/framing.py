"""Framing: cut a byte stream into whole records without parsing them.

The daemon passes input through to ClickHouse in its own format (JSONEachRow, CSV,
TSV), so ClickHouse does the parsing, and a batch is just whole records end to end. A
record ends at a newline, except inside a quoted CSV field (RFC 4180 doubles quotes
inside fields, so the quote count's parity tells whether a newline is inside one).

``*WithNames`` formats start with a header record of column names. The framer keeps it
apart (:attr:`Framer.header`) and returns only data records; the batcher writes the
header at the start of every batch, and the insert task at the start of every
sub-batch, so that each request ClickHouse gets is a complete ``*WithNames`` body.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import BinaryIO

from chworkers import vectorscan
from chworkers.clickhouse.inserts import LINE_FORMATS, split_records
from chworkers.errors import ConfigError

_NEWLINES = re.compile(rb"\n{2,}")
#: An empty line (a newline after a newline): re's literal search finds it, or finds
#: there is none, about 2.5 times as fast as bytes.count.
_PAIR = re.compile(b"\n\n")

#: Input formats the daemon accepts, and whether a newline may sit inside a quoted field.
FORMATS: dict[str, bool] = {name: f.quoted_newlines for name, f in LINE_FORMATS.items()}


class RecordTooLargeError(ValueError):
    """A record grew past ``max_record_bytes`` without ending."""


#: ``on_skip(message)``: a record too long was skipped, to its end.
OnSkip = Callable[[str], None]


class Framer:
    """Accumulates bytes and returns whole records, keeping the unfinished tail.

    A record that grows past ``max_record_bytes`` without ending is dropped whole, to its
    end (the bytes of it still to come are not a record of their own), and said once:
    to ``on_skip(message)`` when given, while the records around it are returned as
    usual; else :class:`RecordTooLargeError` is raised (a caller that frames one whole
    input, and refuses all of it).
    """

    def __init__(
        self,
        format: str,
        *,
        max_record_bytes: int = 16 * 1024 * 1024,
        header: bytes = b"",
        on_skip: OnSkip | None = None,
    ) -> None:
        if format not in FORMATS:
            raise ConfigError(
                f"unsupported input format {format!r}",
                key="format",
                value=format,
                expected="one of " + ", ".join(FORMATS),
            )
        self.format = format
        self.max_record_bytes = max_record_bytes
        #: The header record (``*WithNames``), newline included, once it was read.
        self.header = header
        self._wants_header = LINE_FORMATS[format].header and not header
        self._quoted = FORMATS[format]
        self._tail = b""
        self._tail_quotes = 0  # quotes in the tail, for CSV
        self._on_skip = on_skip
        self._skipping = False  # inside a record too long, dropping it to its end
        #: Bytes of the last :meth:`feed` after the records it returned that were
        #: dropped (the start of a record too long), so not :attr:`pending_bytes`
        #: either: where the records end in the input is its end less both.
        self.dropped_bytes = 0

    def feed(self, data: bytes) -> tuple[bytes, int]:
        """Add ``data``; return the whole records completed so far and their count.

        Empty lines are not counted as records.
        """
        self.dropped_bytes = 0
        if self._skipping and data:
            data = self._skip(data)
        if not data:
            return b"", 0
        if self._quoted:
            end, count = self._csv_end(data)
        else:
            nl = data.rfind(b"\n")
            end, count = (-1, 0) if nl < 0 else (len(self._tail) + nl + 1, -1)
        if end < 0:
            self._tail += data
            self._check_tail()
            return b"", 0
        # One copy of the records (none when they are all of ``data``), not two.
        cut = end - len(self._tail)
        if not self._tail and cut == len(data):
            records = data
        else:
            records = b"".join((self._tail, memoryview(data)[:cut]))
        self._tail = data[cut:]
        self._check_tail()
        if count < 0:
            count = count_lines(records)
        if self._wants_header and count:
            records = self._take_header(records)
            count -= 1
        return records, count

    def _take_header(self, records: bytes) -> bytes:
        """The first record is the header: keep it apart, return the rest."""
        offset = 0
        for record in split_records(records, quoted_newlines=self._quoted):
            offset += len(record)
            if record.strip():
                self.header = record if record.endswith(b"\n") else record + b"\n"
                self._wants_header = False
                return records[offset:]
        return records  # not reached: count says there is a record

    def finish(self) -> tuple[bytes, int]:
        """End of input: the unterminated last record, given a newline."""
        tail, self._tail, self._tail_quotes = self._tail, b"", 0
        self._skipping = False  # a record too long up to the end: dropped, said already
        if not tail.strip():
            return b"", 0
        if self._wants_header:  # a header and nothing else
            self._take_header(tail + b"\n")
            return b"", 0
        return tail + b"\n", 1

    @property
    def pending_bytes(self) -> int:
        return len(self._tail)

    def _check_tail(self) -> None:
        if len(self._tail) > self.max_record_bytes:
            size = len(self._tail)
            # Dropped to its end: what follows up to there is the same record. (CSV: the
            # quotes in it stay counted, to tell where it ends.)
            self._tail, self._skipping = b"", True
            self.dropped_bytes = size
            message = (
                f"a record of more than {size} bytes without an end "
                f"(limit {self.max_record_bytes}); it was skipped"
            )
            if self._on_skip is None:
                raise RecordTooLargeError(message)
            self._on_skip(message)

    def _skip(self, data: bytes) -> bytes:
        """``data`` past the end of the record being dropped (b"": it goes on)."""
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            if self._quoted:
                self._tail_quotes += data.count(b'"', start, nl)
                if self._tail_quotes % 2:  # a newline inside a quoted field
                    start = nl + 1
                    continue
            self._skipping, self._tail_quotes = False, 0
            return data[nl + 1 :]
        if self._quoted:
            self._tail_quotes += data.count(b'"', start)
        return b""

    def _csv_end(self, data: bytes) -> tuple[int, int]:
        """Offset (in tail + data) just past the last newline outside quotes, or -1,
        and how many records end in ``data``."""
        if b'"' not in data and self._tail_quotes % 2 == 0:
            nl = data.rfind(b"\n")
            if nl < 0:
                return -1, 0
            self._tail_quotes = 0
            head = data[: nl + 1]
            count = count_lines(head)
            if self._tail and head.startswith(b"\n"):
                count += 1  # that newline ends the record in the tail
            return len(self._tail) + nl + 1, count
        quotes = self._tail_quotes
        end = -1
        count = 0
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            quotes += data.count(b'"', start, nl)
            if quotes % 2 == 0:
                if nl != end and (nl > 0 or self._tail):  # a blank line is not a record
                    count += 1
                end = nl + 1
                quotes = 0
            start = nl + 1
        if end < 0:
            self._tail_quotes += data.count(b'"')
            return -1, 0
        self._tail_quotes = data.count(b'"', end)
        return len(self._tail) + end, count


def record_over(records: bytes, limit: int, *, quoted: bool) -> int:
    """The length of the first of ``records`` (whole records) longer than ``limit``
    bytes, 0 when none is (at once when all of them together are not)."""
    if len(records) <= limit:
        return 0
    if quoted:
        return next(
            (len(r) for r in split_records(records, quoted_newlines=True) if len(r) > limit), 0
        )
    start = 0
    while start < len(records):
        end = records.find(b"\n", start) + 1 or len(records)
        if end - start > limit:
            return end - start
        start = end
    return 0


def count_lines(records: bytes, start: int = 0, end: int | None = None) -> int:
    """How many records whole newline-ended records of a format without quoted newlines
    (JSONEachRow, TSV) hold (in ``records[start:end]``), counted as :meth:`Framer.feed`
    counts them."""
    end = len(records) if end is None else end
    if start >= end:
        return 0
    counted = vectorscan.counts(records, 0x0A, start, end)  # None: numpy not loaded
    if counted is not None:
        newlines, repeated = counted
        return newlines - repeated - (records[start] == 0x0A)
    return records.count(b"\n", start, end) - _blank_lines(records, start, end)


def pieces(
    records: bytes,
    format: str,
    max_rows: int,
    max_bytes: int,
    *,
    first: tuple[int, int] | None = None,
) -> Iterator[tuple[bytes, int, int]]:
    """``records`` (whole records, as :meth:`Framer.feed` returns them) cut at record
    boundaries into pieces of at most ``max_rows`` records and ``max_bytes`` bytes (a
    record longer than ``max_bytes`` is a piece of its own): ``(piece, rows, end)``,
    ``end`` being where the piece ends in ``records``. Empty lines count as no record,
    as in :meth:`Framer.feed` (a piece of only empty lines has 0 rows).

    ``first`` (rows, bytes): the first piece holds at most that much instead (the room
    left in a batch being gathered, so that it is filled to its limits: a first piece
    that can take nothing is left out)."""
    if FORMATS[format]:
        yield from _quoted_pieces(records, format, max_rows, max_bytes, first)
        return
    start = 0
    rows_room, bytes_room = first or (max_rows, max_bytes)
    while start < len(records):
        end, rows = _line_end(records, start, rows_room, bytes_room)
        rows_room, bytes_room = max_rows, max_bytes
        if end == start:
            if first is not None:  # the room left takes not even one record
                first = None
                continue
            # One record longer than max_bytes: a piece of its own.
            end = records.find(b"\n", start) + 1 or len(records)
            unended = records[end - 1] != 0x0A  # a last record without its newline
            rows = count_lines(records, start, end) + unended
        first = None
        yield records[start:end], rows, end
        start = end


def _quoted_pieces(
    records: bytes, format: str, max_rows: int, max_bytes: int, first: tuple[int, int] | None
) -> Iterator[tuple[bytes, int, int]]:
    """:func:`pieces` of a format whose records may hold newlines: record by record."""
    start = end = rows = 0
    rows_room, bytes_room = first or (max_rows, max_bytes)
    for record in split_records(records, quoted_newlines=True):
        blank = record == b"\n"
        full = (not blank and rows >= rows_room) or end + len(record) - start > bytes_room
        if full and (end > start or first is not None):
            if end > start:
                yield records[start:end], rows, end
            start, rows = end, 0
            rows_room, bytes_room, first = max_rows, max_bytes, None
        end += len(record)
        rows += not blank
    if end > start:
        yield records[start:end], rows, end


def _line_end(records: bytes, start: int, rows: int, size: int) -> tuple[int, int]:
    """Where the longest run of whole lines from ``start`` with at most ``rows`` records
    (empty lines are none) and ``size`` bytes ends (``start``: not even one line fits),
    and the records in it (counted once here: :func:`count_lines` of consecutive
    ranges add up, an empty line at a range's start being one)."""
    if rows <= 0 or size <= 0:
        return start, 0
    stop = records.rfind(b"\n", start, min(len(records), start + size)) + 1
    if stop <= start:
        return start, 0
    end = start
    taken = 0
    while end < stop and taken < rows:
        step, newlines = _after_newlines(records, end, rows - taken, stop)
        # Empty lines take no room: go on.
        taken += newlines - _blank_lines(records, end, step)
        end = step
    while end < stop and records[end] == 0x0A:  # nor do empty lines after the last one
        end += 1
    return end, taken


def _after_newlines(data: bytes, start: int, n: int, stop: int) -> tuple[int, int]:
    """Just past the ``n``-th newline in ``data[start:stop]`` (``stop``, a line's end,
    when there are fewer), and the newlines up to there: a count at C speed up to a
    guess made from the average line length, then a few finds from there (a guess far
    off narrows the range first)."""
    found = vectorscan.nth(data, 0x0A, n, start, stop)  # None: numpy not loaded
    if found is not None:
        return found
    lo, lo_count = start, 0  # lo: a line's start, after lo_count newlines
    hi, hi_count = stop, data.count(b"\n", start, stop)  # likewise
    if hi_count <= n:
        return stop, hi_count
    while n - lo_count > 64 and hi_count - n > 64:
        guess = lo + (hi - lo) * (n - lo_count) // (hi_count - lo_count)
        at = data.rfind(b"\n", lo, guess) + 1
        if at <= lo or at >= hi:
            guess = (lo + hi) // 2  # no line ends near the guess: halve instead
            at = data.rfind(b"\n", lo, guess) + 1
            if at <= lo:
                break
        counted = lo_count + data.count(b"\n", lo, at)
        if counted <= n:
            lo, lo_count = at, counted
        else:
            hi, hi_count = at, counted
    if n - lo_count <= hi_count - n:
        while lo_count < n:
            lo = data.find(b"\n", lo) + 1
            lo_count += 1
        return lo, n
    while hi_count > n:
        hi = data.rfind(b"\n", lo, hi - 1) + 1
        hi_count -= 1
    return hi, n


def has_blank_line(records: bytes) -> bool:
    """Whether ``records`` hold an empty line: a newline first, or right after another
    (found by re's literal search, 2.5 times as fast as ``b"\\n\\n" in records``)."""
    return bool(records) and (records[0] == 0x0A or _PAIR.search(records) is not None)


def _blank_lines(records: bytes, start: int = 0, end: int | None = None) -> int:
    """Empty lines in ``records[start:end]`` (``start`` at a record boundary): a newline
    right after another, or at ``start``."""
    end = len(records) if end is None else end
    if start >= end:
        return 0
    counted = vectorscan.counts(records, 0x0A, start, end)  # None: numpy not loaded
    if counted is not None:
        return counted[1] + (records[start] == 0x0A)
    if _PAIR.search(records, start, end) is None:  # the usual case, at 3 GB/s (count: 1)
        return int(records[start] == 0x0A)
    pairs = records.count(b"\n\n", start, end)  # counts a run of k newlines k // 2 times
    if pairs and records.find(b"\n\n\n", start, end) >= 0:
        pairs = sum(len(run) - 1 for run in _NEWLINES.findall(records, start, end))
    return pairs + (records[start] == 0x0A)


def read_header(fh: BinaryIO, format: str, *, max_record_bytes: int = 16 * 1024 * 1024) -> bytes:
    """The header record at the start of ``fh`` (``*WithNames`` formats; else b""), for a
    source that resumes reading past it. Leaves ``fh`` positioned where it was."""
    if not LINE_FORMATS[format].header:
        return b""
    position = fh.tell()
    framer = Framer(format, max_record_bytes=max_record_bytes)
    try:
        fh.seek(0)
        while not framer.header:
            chunk = fh.read(64 * 1024)
            if not chunk:
                framer.finish()
                break
            framer.feed(chunk)
    finally:
        fh.seek(position)
    return framer.header
