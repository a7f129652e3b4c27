"""Batching: records in, durable batches out.

Sources hand the :class:`Batcher` whole records (already framed, each ending in a
newline) for a table. The batcher groups them per (pipeline, table, format, settings)
and cuts a batch when it reaches ``max_rows`` or ``max_bytes``, or when its first record
is ``max_delay`` old. A batch never exceeds ``max_rows`` or ``max_bytes`` unless a
single add does (a pushed request is one add): records that would take the open batch
past a limit start the next one, and sources add at most a batch's worth at a time. A
cut batch is written to the spool first, and only then are the
producers' :class:`Ticket` s resolved and the batch handed on for inserting: an HTTP
client is answered, or a file position saved, only once its data is on disk.

Cutting happens in the producer's thread when a size limit is reached (so a full spool
slows producers down instead of growing memory) and in the batcher's timer thread when
a batch is old enough. The lock guards only the buffers; spool I/O runs outside it.

When the spool cannot take a batch (full, or the disk failing), what happens to each
add's records depends on how it was added:

* ``retry=True`` (file and stdin sources, which cannot be told "no"): the batch is kept
  and written again with a growing backoff until the spool takes it. Batches of one
  pipeline are spooled in order, so later ones wait and the producer blocks: a file
  position is never saved past records that are not in the spool.
* ``retry=False`` (HTTP push): the ticket fails and the records are dropped; the client
  is answered 503. :meth:`Ticket.settle` withdraws records that were not spooled in
  time, so that a request answered anything but 202 never lands later.

:meth:`Batcher.close` is bounded: past its timeout, cuts still waiting for the spool
give up, their tickets fail, and nothing more is written.

Here: adding records, cutting, the timer, closing. A buffer and the limits are
:mod:`chworkers.daemon.batchbuffer`'s; a cut batch's way into the spool is
:mod:`chworkers.daemon.batchspooling`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from chworkers.daemon.batchbuffer import BatchLimits, Buffer, BufferKey, overflows
from chworkers.daemon.batchfile import SpooledBatch
from chworkers.daemon.batchspooling import RETRY_INITIAL as RETRY_INITIAL
from chworkers.daemon.batchspooling import RETRY_MAX as RETRY_MAX
from chworkers.daemon.batchspooling import BatchSpooling
from chworkers.daemon.extents import Extent
from chworkers.daemon.spool import Spool
from chworkers.daemon.stalls import Stalls
from chworkers.daemon.ticket import Ticket, TicketState
from chworkers.errors import BatcherClosedError, SpoolTimeoutError
from chworkers.ops.metrics import Metrics

__all__ = ["BatchLimits", "Batcher", "Ticket"]

log = logging.getLogger(__name__)

#: A batch is at most this fraction (1/n) of what the spool can ever hold.
CAPACITY_SHARE = 4


class Batcher(BatchSpooling):
    """Groups records into batches, spools them, and hands each to ``on_batch``."""

    def __init__(
        self,
        spool: Spool,
        on_batch: Callable[[SpooledBatch], None],
        *,
        limits: BatchLimits | None = None,
        metrics: Metrics | None = None,
        adjust: Callable[[str, BatchLimits], BatchLimits] | None = None,
    ) -> None:
        self.spool = spool
        self.metrics = metrics
        self.on_batch = on_batch
        self.limits = limits or BatchLimits()
        #: ``adjust(table, limits)``: the limits a new batch of ``table`` gets now (the
        #: daemon grows them while the table's merges fall behind).
        self.adjust = adjust
        capacity, self._largest_why = spool.capacity()
        self._largest = max(1, capacity // CAPACITY_SHARE)
        self._largest_said = 0  # the largest max_bytes cut down so far (warned once)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._buffers: dict[BufferKey, Buffer] = {}
        self._last_cut: dict[BufferKey, Buffer] = {}
        self._stalls = Stalls(metrics)
        self._closed = False
        self._give_up_at: float | None = None  # time.monotonic(); None: never
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
        retry: bool = False,
        timeout: float | None = None,
        header: bytes = b"",
        token: str | None = None,
        memory: bool = False,
        extent: Extent | None = None,
    ) -> Ticket:
        """Add ``rows`` framed records, which go into one batch together.

        ``meta`` (e.g. a file position) rides along with the batch and the latest one
        wins. ``retry``: keep trying to spool them until the spool takes them (the
        caller may block meanwhile); else a refused write fails the ticket. ``timeout``
        (without ``retry``): give up waiting for spool space after this long.
        ``header`` (``*WithNames`` formats): the header record the records go with;
        every batch starts with it, and records with another header go to other batches.
        ``token``: the records are a batch of their own, with this deduplication token,
        cut at once (a pushed request with an ``Idempotency-Key``).
        ``memory``: the batch goes to the spool's memory tier, not to disk (a broker's
        batch, which the broker holds durably: :mod:`chworkers.daemon.memorytier`).
        ``extent``: where the records are in the file they were read from; a batch whose
        records all have one is spooled by reference (:mod:`chworkers.daemon.extents`).
        Raises :class:`~chworkers.errors.BatcherClosedError` once closed.
        """
        settings = dict(settings or {})
        key = _key(pipeline, table, format, settings, header, token, memory)
        deadline = None if timeout is None else time.monotonic() + timeout
        ticket = Ticket(self._withdraw, records, rows, meta, retry, deadline, extent)
        with self._lock:
            if self._closed:
                raise BatcherClosedError(
                    "the batcher is closed (the daemon is stopping); no more records are accepted"
                )
            buf = self._buffers.get(key)
            early: Buffer | None = None
            if buf is not None and buf.rows and overflows(buf, rows, len(records)):
                # These records would take the open batch past a limit: cut it as it is,
                # and they start the next one (a batch exceeds a limit only when one
                # add alone does; sources add at most a batch's worth at a time).
                early = self._take(key)
                buf = None
            if buf is None:
                limits = self.limits_for(table, limits)
                buf = Buffer(
                    key,
                    pipeline,
                    table,
                    format,
                    settings,
                    limits,
                    time.monotonic(),
                    header,
                    token or "",
                    memory,
                )
                self._buffers[key] = buf
                self._wake.notify()
            buf.tickets.append(ticket)
            buf.rows += rows
            buf.size += len(records)
            full = bool(buf.token) or buf.rows >= buf.limits.max_rows
            full = full or buf.size >= buf.limits.max_bytes
            if full:
                self._take(key)
        if self.metrics is not None:
            self.metrics.source_rows.labels(source=pipeline or table).inc(rows)
        if early is not None:
            self._cut(early)
        if full:
            self._cut(buf)
        return ticket

    def room(
        self,
        table: str,
        *,
        format: str,
        pipeline: str = "",
        settings: Mapping[str, Any] | None = None,
        limits: BatchLimits | None = None,
        header: bytes = b"",
    ) -> tuple[int, int, BatchLimits]:
        """What the batch being gathered for these records (as :meth:`add` would take
        them) has room for, rows and bytes, and the limits of the batches after it: a
        source that cuts its records there fills every batch to its limits (the same
        pieces a client posting ``max_rows`` lines at a time sends)."""
        key = _key(pipeline, table, format, dict(settings or {}), header, None, False)
        with self._lock:
            buf = self._buffers.get(key)
            if buf is not None:
                later = buf.limits
                return later.max_rows - buf.rows, later.max_bytes - buf.size, later
        later = self.limits_for(table, limits)
        return later.max_rows, later.max_bytes, later

    def limits_for(self, table: str, limits: BatchLimits | None = None) -> BatchLimits:
        """The limits a batch of ``table`` started now gets (``limits``, or the batcher's,
        as ``adjust`` grows them): a caller waiting for its records to be cut waits up to
        their ``max_delay``. Batches are cut at :data:`CAPACITY_SHARE` of what the spool
        can ever hold at most: a batch larger than its whole disk waited for room that
        never came, and the source behind it with it."""
        limits = limits or self.limits
        limits = limits if self.adjust is None else self.adjust(table, limits)
        if limits.max_bytes <= self._largest:
            return limits
        if self._largest_said < limits.max_bytes:
            self._largest_said = limits.max_bytes
            log.warning(
                "batches of %s are cut at %d bytes instead of %d: the spool can never hold "
                "more than %d (%s), and a batch must fit beside others",
                table,
                self._largest,
                limits.max_bytes,
                self._largest * CAPACITY_SHARE,
                self._largest_why,
            )
        return dataclasses.replace(limits, max_bytes=self._largest)

    def flush(self) -> None:
        """Cut and spool every open batch now; returns once every record added before
        the call is spooled or given up on (including batches the timer thread or a
        producer is cutting right now)."""
        with self._lock:
            buffers = [self._take(key) for key in list(self._buffers)]
            pending = list(self._last_cut.values())
        for buf in buffers:
            self._cut(buf)
        for cut in pending:
            cut.finished.wait()

    def close(self, timeout: float | None = None) -> bool:
        """Flush what is buffered and stop; later adds raise.

        Waits up to ``timeout`` (None: as long as it takes) for the spool to take the
        batches; after that, cuts still waiting give up and their tickets fail (a file
        source reads those records again at its next start). True if nothing was given
        up on."""
        with self._lock:
            self._closed = True
            if timeout is not None:
                self._give_up_locked(time.monotonic() + timeout)
            self._wake.notify_all()
        self.flush()
        self._timer.join(timeout=5)
        with self._lock:
            return not any(b.abandoned for b in self._last_cut.values())

    def give_up_at(self, deadline: float) -> None:
        """From ``deadline`` (``time.monotonic()``) on, stop waiting for the spool:
        pending cuts fail their tickets and nothing more is spooled."""
        with self._lock:
            self._give_up_locked(deadline)

    def _give_up_locked(self, deadline: float) -> None:
        if self._give_up_at is None or deadline < self._give_up_at:
            self._give_up_at = deadline

    def pending(self) -> tuple[int, int]:
        """Rows and bytes buffered, not yet spooled."""
        with self._lock:
            return (
                sum(b.rows for b in self._buffers.values()),
                sum(b.size for b in self._buffers.values()),
            )

    def problems(self) -> list[str]:
        """Batches the spool has not taken yet, and why (empty when it keeps up)."""
        return self._stalls.problems()

    # -- internals ---------------------------------------------------------------------

    def _withdraw(self, ticket: Ticket) -> bool:
        with self._lock:
            if ticket.state is TicketState.FAILED:
                return True
            if ticket.state is not TicketState.PENDING:
                return False
            size = len(ticket.records)
            ticket.resolve(
                None,
                SpoolTimeoutError(
                    "the spool did not take the records in time; they were withdrawn and "
                    "will not be spooled"
                ),
            )
            for key, buf in self._buffers.items():
                if ticket in buf.tickets:  # still buffered: forget it now
                    buf.tickets.remove(ticket)
                    buf.rows -= ticket.rows
                    buf.size -= size
                    if not buf.tickets:
                        del self._buffers[key]
                    break
            return True

    def _run_timer(self) -> None:
        while True:
            due: list[Buffer] = []
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
                try:
                    self._cut(buf)
                except Exception:  # the timer must live on: every timed cut depends on it
                    log.exception("the batcher's timer could not cut a batch")

    def _take(self, key: BufferKey) -> Buffer:
        """Remove a buffer for cutting (under the lock), chained after the previous cut."""
        buf = self._buffers.pop(key)
        buf.after = self._last_cut.get(key)
        self._last_cut[key] = buf
        return buf


def _key(
    pipeline: str,
    table: str,
    format: str,
    settings: Mapping[str, Any],
    header: bytes,
    token: str | None,
    memory: bool,
) -> BufferKey:
    """The buffer records go to: batches never mix these."""
    flat = tuple(sorted((k, str(v)) for k, v in settings.items()))
    return (pipeline, table, format, flat, header, token or "", memory)
