"""Batching: records in, durable batches out.

Sources hand the :class:`Batcher` whole records (already framed, each ending in a
newline) for a table. The batcher groups them per (pipeline, table, format, settings)
and cuts a batch when it reaches ``max_rows`` or ``max_bytes``, or when its first record
is ``max_delay`` old. A cut batch is written to the spool first, and only then are the
producers' :class:`Ticket` s resolved and the batch handed on for inserting: an HTTP
client is answered, or a file position saved, only once its data is on disk.

Cutting happens in the producer's thread when a size limit is reached (so a full spool
slows producers down instead of growing memory) and in the batcher's timer thread when
a batch is old enough. The lock guards only the buffers; spool I/O runs outside it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from chworkers.errors import ChworkersError
from chworkers.metrics import Metrics
from chworkers.spool import Spool, SpooledBatch

log = logging.getLogger(__name__)


class Ticket:
    """Resolved when the records it stands for are durably spooled (or failed to be)."""

    __slots__ = ("_done", "_error", "batch_seq")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: BaseException | None = None
        self.batch_seq: int | None = None

    def _resolve(self, seq: int | None, error: BaseException | None) -> None:
        self.batch_seq = seq
        self._error = error
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until spooled; re-raises the spool's error (e.g. SpoolFullError)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"records not spooled within {timeout} s")
        if self._error is not None:
            raise self._error


@dataclasses.dataclass(frozen=True)
class BatchLimits:
    """When to cut a batch: whichever limit is reached first."""

    max_rows: int = 100_000
    max_bytes: int = 16 * 1024 * 1024
    max_delay: float = 1.0


@dataclasses.dataclass
class _Buffer:
    pipeline: str
    table: str
    format: str
    settings: Mapping[str, Any]
    limits: BatchLimits
    started: float
    chunks: list[bytes] = dataclasses.field(default_factory=list)
    rows: int = 0
    size: int = 0
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    tickets: list[Ticket] = dataclasses.field(default_factory=list)
    # Batches of one key are spooled in the order they were cut, so that a position
    # carried by a later batch is never saved before an earlier batch is on disk.
    after: threading.Event | None = None
    spooled: threading.Event = dataclasses.field(default_factory=threading.Event)


_Key = tuple[str, str, str, tuple[tuple[str, str], ...]]


class Batcher:
    """Groups records into batches, spools them, and hands each to ``on_batch``."""

    def __init__(
        self,
        spool: Spool,
        on_batch: Callable[[SpooledBatch], None],
        *,
        limits: BatchLimits | None = None,
        spool_timeout: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.spool = spool
        self.metrics = metrics
        self.on_batch = on_batch
        self.limits = limits or BatchLimits()
        self.spool_timeout = spool_timeout
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._buffers: dict[_Key, _Buffer] = {}
        self._last_cut: dict[_Key, threading.Event] = {}
        self._closed = False
        self._timer = threading.Thread(
            target=self._run_timer, name="chworkers-batcher", daemon=True
        )
        self._timer.start()

    def add(
        self,
        table: str,
        records: bytes,
        rows: int,
        *,
        format: str,
        pipeline: str = "",
        settings: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        limits: BatchLimits | None = None,
    ) -> Ticket:
        """Add ``rows`` framed records; ``meta`` (e.g. a file position) rides along
        with the batch and the latest one wins."""
        settings = dict(settings or {})
        key: _Key = (
            pipeline,
            table,
            format,
            tuple(sorted((k, str(v)) for k, v in settings.items())),
        )
        ticket = Ticket()
        with self._lock:
            if self._closed:
                raise ChworkersError("the batcher is closed; no more records are accepted")
            buf = self._buffers.get(key)
            if buf is None:
                buf = _Buffer(
                    pipeline, table, format, settings, limits or self.limits, time.monotonic()
                )
                self._buffers[key] = buf
                self._wake.notify()
            buf.chunks.append(records)
            buf.rows += rows
            buf.size += len(records)
            buf.tickets.append(ticket)
            if meta:
                _merge(buf.meta, meta)
            full = buf.rows >= buf.limits.max_rows or buf.size >= buf.limits.max_bytes
            if full:
                self._take(key)
        if self.metrics is not None:
            self.metrics.source_rows.labels(source=pipeline or table).inc(rows)
        if full:
            self._cut(buf)
        return ticket

    def flush(self) -> None:
        """Cut and spool every open batch now; returns once every record added before
        the call is spooled (including batches the timer thread is cutting right now)."""
        with self._lock:
            buffers = [self._take(key) for key in list(self._buffers)]
            pending = list(self._last_cut.values())
        for buf in buffers:
            self._cut(buf)
        for spooled in pending:
            spooled.wait()

    def close(self) -> None:
        """Flush what is buffered and stop the timer; later adds raise."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        self.flush()
        self._timer.join(timeout=5)

    def pending(self) -> tuple[int, int]:
        """Rows and bytes buffered, not yet spooled."""
        with self._lock:
            return (
                sum(b.rows for b in self._buffers.values()),
                sum(b.size for b in self._buffers.values()),
            )

    def _run_timer(self) -> None:
        while True:
            due: list[_Buffer] = []
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                next_due: float | None = None
                for key, buf in list(self._buffers.items()):
                    deadline = buf.started + buf.limits.max_delay
                    if deadline <= now:
                        due.append(self._take(key))
                    elif next_due is None or deadline < next_due:
                        next_due = deadline
                if not due:
                    self._wake.wait(None if next_due is None else next_due - now)
                    continue
            for buf in due:
                self._cut(buf)

    def _take(self, key: _Key) -> _Buffer:
        """Remove a buffer for cutting (under the lock), chained after the previous cut."""
        buf = self._buffers.pop(key)
        buf.after = self._last_cut.get(key)
        self._last_cut[key] = buf.spooled
        return buf

    def _cut(self, buf: _Buffer) -> None:
        if buf.after is not None:
            buf.after.wait()
        try:
            self._spool(buf)
        finally:
            buf.spooled.set()

    def _spool(self, buf: _Buffer) -> None:
        try:
            batch = self.spool.put(
                buf.table,
                b"".join(buf.chunks),
                format=buf.format,
                rows=buf.rows,
                settings=buf.settings,
                pipeline=buf.pipeline,
                meta=buf.meta,
                timeout=self.spool_timeout,
            )
        except Exception as exc:  # the producers hear about it through their tickets
            log.warning("could not spool a batch of %d rows for %s: %s", buf.rows, buf.table, exc)
            for ticket in buf.tickets:
                ticket._resolve(None, exc)
            return
        for ticket in buf.tickets:
            ticket._resolve(batch.seq, None)
        try:
            self.on_batch(batch)
        except Exception:
            # The batch is safe in the spool and will be replayed on the next start.
            log.exception("handing batch %d on failed; it stays in the spool", batch.seq)


def _merge(into: dict[str, Any], meta: Mapping[str, Any]) -> None:
    """Later values win; nested mappings (e.g. per-file positions) merge key by key."""
    for key, value in meta.items():
        old = into.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            old.update(value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
