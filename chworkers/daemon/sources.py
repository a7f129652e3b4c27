"""The sources' common part, and standard input.

A source frames its input into whole records (:mod:`chworkers.daemon.framing`) and adds
them to the :class:`~chworkers.daemon.batcher.Batcher`, one read (``read_size`` bytes) at
a time; a batch is cut once it reaches its limits, so it may exceed them by one read.
The sources of their own: files (:mod:`chworkers.daemon.filesource`), the generator
(:mod:`chworkers.daemon.generator`), whole columnar files
(:mod:`chworkers.daemon.columnsource`).
"""

from __future__ import annotations

import glob
import io
import logging
import select
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO

from chworkers.clickhouse.inserts import split_records
from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.batchfile import batch_overhead
from chworkers.daemon.extents import Extent
from chworkers.daemon.framing import FORMATS, Framer, pieces, record_over
from chworkers.daemon.ticket import Ticket

__all__ = ["READ_SIZE", "StreamSource", "warn_if_nothing_matches"]

#: How often (ms) a source waiting on an open, silent stream looks whether to stop.
_STOP_LOOK_MS = 200

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20
#: Room kept in a batch file for what rides along with a batch of one record (a file's
#: path and position), beyond :func:`~chworkers.daemon.batchfile.batch_overhead`.
META_ROOM = 1024


class _Source:
    #: Whether the source frames records of a line format (the columnar file source
    #: reads whole files instead).
    framed = True

    def __init__(
        self,
        *,
        name: str,
        table: str,
        format: str,
        batcher: Batcher,
        settings: Mapping[str, Any] | None = None,
        on_error: Callable[[str, str], None] | None = None,
        max_record_bytes: int = 16 * 1024 * 1024,
        read_size: int = READ_SIZE,
        limits: BatchLimits | None = None,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.name = name
        self.transform = transform
        self.limits = limits
        self.read_size = read_size
        self.table = table
        self.format = format
        self.batcher = batcher
        self.settings = dict(settings or {})
        self.on_error = on_error
        self.max_record_bytes = max_record_bytes
        if self.framed:
            self.max_record_bytes = self._fitting(max_record_bytes)
        self.rows = 0
        #: The last records added (a file source releases a file once they are spooled).
        self.last_ticket: Ticket | None = None
        if self.framed:
            Framer(format)  # validate the format now, not at the first byte
            self._quoted = FORMATS[format]

    def _fitting(self, limit: int) -> int:
        """The longest record this source takes: ``limit``, or less when the spool could
        never hold a batch of one so long. A longer record is skipped to its end, as a
        push of it is refused (413): the spool never takes a batch larger than it can
        ever hold, empty or not (docs/daemon.md, "The spool's limit")."""
        capacity, what = self.batcher.spool.capacity()
        room = capacity - batch_overhead(self.table, self.name) - META_ROOM
        if room >= limit:
            return limit
        room = max(1, room)
        log.warning(
            "source %s: records longer than %d bytes will be skipped: the spool can never "
            "hold more than %d (%s)",
            self.name,
            room,
            capacity,
            what,
        )
        return room

    def _add(
        self,
        records: bytes,
        rows: int,
        meta: Mapping[str, Any] | None = None,
        *,
        header: bytes = b"",
        position: Callable[[int], Mapping[str, Any]] | None = None,
        locate: Callable[[int, int], Extent | None] | None = None,
    ) -> None:
        """Add whole records, at most a batch's worth at a time (so that no batch
        exceeds the pipeline's limits): more are cut at record boundaries, each piece
        with ``position(end)`` as its meta when given (``end``: where the piece ends in
        ``records``; a file's position there), else ``meta``, and with
        ``locate(start, end)``, where the piece is in its file, when given. Records
        longer than :attr:`max_record_bytes` are skipped, each said (the framer skips
        those that outgrow a read; these came whole within one)."""
        if self.framed and record_over(records, self.max_record_bytes, quoted=self._quoted):
            self._add_around_long(records, meta, header, position, locate)
            return
        rows_room, bytes_room, limits = self.batcher.room(
            self.table,
            format=self.format,
            pipeline=self.name,
            settings=self.settings,
            limits=self.limits,
            header=header,
        )
        if rows <= rows_room and len(records) <= bytes_room:
            here = None if locate is None else locate(0, len(records))
            self._add_one(records, rows, meta, header, here)
            return
        # Cut where the open batch is full, so that batches hold max_rows records (not
        # what whole reads happened to fit), and the rest in batch-sized pieces.
        first = (rows_room, bytes_room)
        start = 0
        for piece, n, end in pieces(
            records, self.format, limits.max_rows, limits.max_bytes, first=first
        ):
            at = meta if position is None else position(end)
            self._add_one(piece, n, at, header, None if locate is None else locate(start, end))
            start = end

    def _add_around_long(
        self,
        records: bytes,
        meta: Mapping[str, Any] | None,
        header: bytes,
        position: Callable[[int], Mapping[str, Any]] | None,
        locate: Callable[[int, int], Extent | None] | None,
    ) -> None:
        """:meth:`_add` of the records between those too long, which are skipped."""
        limit = self.max_record_bytes
        start = end = 0
        for record in split_records(records, quoted_newlines=self._quoted):
            if len(record) <= limit:
                end += len(record)
                continue
            self._add_range(records, start, end, meta, header, position, locate)
            self._error(f"a record of {len(record)} bytes (limit {limit}); it was skipped")
            start = end = end + len(record)
        self._add_range(records, start, end, meta, header, position, locate)

    def _add_range(
        self,
        records: bytes,
        start: int,
        end: int,
        meta: Mapping[str, Any] | None,
        header: bytes,
        position: Callable[[int], Mapping[str, Any]] | None,
        locate: Callable[[int, int], Extent | None] | None,
    ) -> None:
        part = records[start:end]
        rows = sum(1 for r in split_records(part, quoted_newlines=self._quoted) if r.strip())
        if not rows:
            return
        self._add(
            part,
            rows,
            meta,
            header=header,
            position=None if position is None else lambda at: position(start + at),
            locate=None if locate is None else lambda b, e: locate(start + b, start + e),
        )

    def _add_one(
        self,
        records: bytes,
        rows: int,
        meta: Mapping[str, Any] | None,
        header: bytes,
        extent: Extent | None = None,
    ) -> None:
        if not rows:
            return
        if self.transform is not None:
            records = self.transform(records)
            extent = None  # the records are no longer the file's bytes
        self.last_ticket = self.batcher.add(
            self.table,
            records,
            rows,
            format=self.format,
            pipeline=self.name,
            settings=self.settings,
            meta=meta,
            limits=self.limits,
            retry=True,  # a source cannot be told "no": it waits until the spool takes them
            header=header,
            extent=extent,
        )
        self.rows += rows

    def problems(self) -> list[str]:
        """What the health checks ask a source: these have nothing of their own to tell
        (a source thread that dies is the intake's to report)."""
        return []

    def _error(self, message: str) -> None:
        log.warning("source %s: %s", self.name, message)
        if self.on_error is not None:
            self.on_error(self.name, message)


class StreamSource(_Source):
    """Reads a binary stream (standard input) to its end."""

    def __init__(self, stream: BinaryIO, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stream = stream

    def run(self, stop: threading.Event) -> None:
        framer = Framer(self.format, max_record_bytes=self.max_record_bytes, on_skip=self._error)
        read = self._reader(stop)
        while not stop.is_set():
            chunk = read(self.read_size)
            if chunk is None:
                continue  # nothing came within the look: see whether the daemon stops
            if not chunk:
                break
            self._add(*framer.feed(chunk), header=framer.header)
        self._add(*framer.finish(), header=framer.header)

    def _reader(self, stop: threading.Event) -> Callable[[int], bytes | None]:
        """How to read the stream so that a stop is seen while no data comes.

        A pipe or terminal that stays open with nothing in it blocked ``read`` for good: a
        SIGTERM then waited out the whole graceful timeout, and the interpreter died at exit
        ("could not acquire lock for <stdin>": a daemon thread inside the buffered reader).
        So a stream with a file descriptor is read only once ``poll`` says a read will not
        block (data, the end, or an error), looking at ``stop`` in between.
        """
        read1: Callable[[int], bytes] = getattr(self.stream, "read1", self.stream.read)
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return read1  # an in-memory stream never waits
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)

        def read(size: int) -> bytes | None:
            if not poller.poll(_STOP_LOOK_MS) or stop.is_set():
                return None
            return read1(size)

        return read


def warn_if_nothing_matches(name: str, patterns: Sequence[str], follow: bool) -> None:
    """A one-shot file pipeline whose paths match no file reads nothing: a wrong path
    would otherwise only show as "inserted 0 rows" (``check`` says so too)."""
    if not follow and not any(glob.glob(pattern) for pattern in patterns):
        log.warning(
            "source %s: no file matches %s: nothing to read (check the paths)",
            name,
            ", ".join(patterns),
        )
