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

from collections.abc import Iterator
from typing import BinaryIO

from chworkers.clickhouse.inserts import LINE_FORMATS, split_records
from chworkers.errors import ConfigError

#: Input formats the daemon accepts, and whether a newline may sit inside a quoted field.
FORMATS: dict[str, bool] = {name: f.quoted_newlines for name, f in LINE_FORMATS.items()}


class RecordTooLargeError(ValueError):
    """A record grew past ``max_record_bytes`` without ending."""


class Framer:
    """Accumulates bytes and returns whole records, keeping the unfinished tail."""

    def __init__(
        self, format: str, *, max_record_bytes: int = 16 * 1024 * 1024, header: bytes = b""
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

    def feed(self, data: bytes) -> tuple[bytes, int]:
        """Add ``data``; return the whole records completed so far and their count.

        Empty lines are not counted as records.
        """
        if not data:
            return b"", 0
        if self._quoted:
            end, count = self._csv_end(data)
        else:
            nl = data.rfind(b"\n")
            end, count = (-1, 0) if nl < 0 else (len(self._tail) + nl + 1, -1)
        buf = self._tail + data
        if end < 0:
            self._tail = buf
            self._check_tail()
            return b"", 0
        records, self._tail = buf[:end], buf[end:]
        self._check_tail()
        if count < 0:
            count = records.count(b"\n") - _blank_lines(records)
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
            self._tail, self._tail_quotes = b"", 0
            raise RecordTooLargeError(
                f"a record of more than {size} bytes without an end "
                f"(limit {self.max_record_bytes}); it was skipped"
            )

    def _csv_end(self, data: bytes) -> tuple[int, int]:
        """Offset (in tail + data) just past the last newline outside quotes, or -1,
        and how many records end in ``data``."""
        if b'"' not in data and self._tail_quotes % 2 == 0:
            nl = data.rfind(b"\n")
            if nl < 0:
                return -1, 0
            self._tail_quotes = 0
            head = data[: nl + 1]
            count = head.count(b"\n") - _blank_lines(head)
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


def count_lines(records: bytes) -> int:
    """How many records whole newline-ended records of a format without quoted newlines
    (JSONEachRow, TSV) hold, counted as :meth:`Framer.feed` counts them."""
    return records.count(b"\n") - _blank_lines(records)


def pieces(
    records: bytes, format: str, max_rows: int, max_bytes: int
) -> Iterator[tuple[bytes, int, int]]:
    """``records`` (whole records, as :meth:`Framer.feed` returns them) cut at record
    boundaries into pieces of at most ``max_rows`` records and ``max_bytes`` bytes (a
    record longer than ``max_bytes`` is a piece of its own): ``(piece, rows, end)``,
    ``end`` being where the piece ends in ``records``. Empty lines count as no record,
    as in :meth:`Framer.feed` (a piece of only empty lines has 0 rows)."""
    start = end = rows = 0
    for record in split_records(records, quoted_newlines=FORMATS[format]):
        blank = record == b"\n"
        full = (not blank and rows >= max_rows) or end + len(record) - start > max_bytes
        if full and end > start:
            yield records[start:end], rows, end
            start, rows = end, 0
        end += len(record)
        rows += not blank
    if end > start:
        yield records[start:end], rows, end


def _blank_lines(records: bytes) -> int:
    return records.count(b"\n\n") + (1 if records.startswith(b"\n") else 0)


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
