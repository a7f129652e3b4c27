"""Batching: records in, durable batches out.

Sources hand the :class:`Batcher` whole records (already framed, each ending in a
newline) for a table. The batcher groups them per (pipeline, table, format, settings)
and cuts a batch when it reaches ``max_rows`` or ``max_bytes``, or when its first record
is ``max_delay`` old. A batch never exceeds ``max_rows`` or ``max_bytes`` unless a
single add does (a pushed request is one add): records that would take the open batch
past a limit start the next one, and sources add at most a batch's worth at a time. A cut batch is written to the spool first, and only then are the
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
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from chworkers.daemon.batchfile import SpooledBatch, batch_overhead
from chworkers.daemon.spool import Spool
from chworkers.daemon.stalls import Stalls
from chworkers.daemon.ticket import Ticket, TicketState
from chworkers.errors import BatcherClosedError, SpoolError, SpoolTimeoutError
from chworkers.ops.metrics import Metrics
from chworkers.settings import setting, validate

__all__ = ["BatchLimits", "Batcher", "Ticket"]

log = logging.getLogger(__name__)

#: Backoff between attempts to spool a batch the spool refused (seconds).
RETRY_INITIAL = 0.1
RETRY_MAX = 2.0


@dataclasses.dataclass(frozen=True)
class BatchLimits:
    """When to cut a batch: whichever limit is reached first (a pipeline's
    ``max_rows``, ``max_bytes`` and ``max_delay`` are these declarations)."""

    max_rows: int = setting(100_000, "Cut a batch at this many rows.", minimum=1)
    max_bytes: int = setting(16 * 1024 * 1024, "Cut a batch at this size.", unit="bytes", minimum=1)
    max_delay: float = setting(
        1.0, "Cut a batch when its first record is this old.", unit="seconds", minimum=0.001
    )

    def __post_init__(self) -> None:
        validate(self, source="batch limits")


_Key = tuple[str, str, str, tuple[tuple[str, str], ...], bytes, str, bool]


@dataclasses.dataclass(eq=False)
class _Buffer:
    key: _Key
    pipeline: str
    table: str
    format: str
    settings: Mapping[str, Any]
    limits: BatchLimits
    started: float
    #: ``*WithNames``: the header record every batch of the key starts with.
    header: bytes = b""
    #: A deduplication token of the caller's (the batch is the one add that has it).
    token: str = ""
    #: Kept in the spool's memory tier, not written to disk (a broker's batch).
    memory: bool = False
    tickets: list[Ticket] = dataclasses.field(default_factory=list)
    rows: int = 0
    size: int = 0
    # Batches of one key are spooled in the order they were cut, so that a position
    # carried by a later batch is never saved before an earlier batch is on disk.
    after: _Buffer | None = None
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: Records that had to be spooled (retry) were given up on: later cuts of the key
    #: must not be spooled either, or a later position would be saved past them.
    abandoned: bool = False


def _overflows(buf: _Buffer, rows: int, size: int) -> bool:
    """Whether ``rows`` records of ``size`` bytes would take ``buf`` past a limit."""
    return buf.rows + rows > buf.limits.max_rows or buf.size + size > buf.limits.max_bytes


class Batcher:
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
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._buffers: dict[_Key, _Buffer] = {}
        self._last_cut: dict[_Key, _Buffer] = {}
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
        Raises :class:`~chworkers.errors.BatcherClosedError` once closed.
        """
        settings = dict(settings or {})
        key: _Key = (
            pipeline,
            table,
            format,
            tuple(sorted((k, str(v)) for k, v in settings.items())),
            header,
            token or "",
            memory,
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        ticket = Ticket(self._withdraw, records, rows, meta, retry, deadline)
        with self._lock:
            if self._closed:
                raise BatcherClosedError(
                    "the batcher is closed (the daemon is stopping); no more records are accepted"
                )
            buf = self._buffers.get(key)
            early: _Buffer | None = None
            if buf is not None and buf.rows and _overflows(buf, rows, len(records)):
                # These records would take the open batch past a limit: cut it as it is,
                # and they start the next one (a batch exceeds a limit only when one
                # add alone does; sources add at most a batch's worth at a time).
                early = self._take(key)
                buf = None
            if buf is None:
                limits = self.limits_for(table, limits)
                buf = _Buffer(
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

    def limits_for(self, table: str, limits: BatchLimits | None = None) -> BatchLimits:
        """The limits a batch of ``table`` started now gets (``limits``, or the batcher's,
        as ``adjust`` grows them): a caller waiting for its records to be cut waits up to
        their ``max_delay``."""
        limits = limits or self.limits
        return limits if self.adjust is None else self.adjust(table, limits)

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

    def _giving_up(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

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
                try:
                    self._cut(buf)
                except Exception:  # the timer must live on: every timed cut depends on it
                    log.exception("the batcher's timer could not cut a batch")

    def _take(self, key: _Key) -> _Buffer:
        """Remove a buffer for cutting (under the lock), chained after the previous cut."""
        buf = self._buffers.pop(key)
        buf.after = self._last_cut.get(key)
        self._last_cut[key] = buf
        return buf

    def _cut(self, buf: _Buffer) -> None:
        try:
            if buf.after is not None:
                buf.after.finished.wait()
                buf.abandoned = buf.after.abandoned
                buf.after = None  # no chain of buffers kept alive
            self._spool(buf)
        finally:
            buf.finished.set()
            with self._lock:
                # The last cut of a key is kept only while a later one may chain after
                # it (or to tell it was abandoned): keys can be many (tokens, headers).
                if self._last_cut.get(buf.key) is buf and not buf.abandoned:
                    del self._last_cut[buf.key]

    def _spool(self, buf: _Buffer) -> None:
        """Write the buffer's live records to the spool, retrying as their adds asked."""
        backoff = RETRY_INITIAL
        try:
            while True:
                live = self._live(buf)
                if not live:
                    return
                try:
                    batch = self._write(buf, live)
                except Exception as exc:
                    if not isinstance(exc, SpoolError):
                        # A bug, not the disk: still no record is dropped (a source's
                        # position must not pass them), and it is loud.
                        log.exception("pipeline %s: spooling a batch failed", buf.pipeline)
                        exc = SpoolError(f"spooling failed: {type(exc).__name__}: {exc}")
                    if not self._failed(buf, exc):
                        return
                    with self._lock:
                        rows = sum(t.rows for t in buf.tickets)
                    self._stalls.refused(id(buf), buf.pipeline, buf.table, rows, exc)
                    self._sleep(backoff)
                    backoff = min(RETRY_MAX, backoff * 2)
                    continue
                if batch is None:
                    continue  # everything was withdrawn meanwhile; look again
                self._stalls.taken(id(buf), batch.rows)
                try:
                    self.on_batch(batch)
                except Exception:
                    # The batch is safe in the spool and will be replayed on the next start.
                    log.exception("handing batch %d on failed; it stays in the spool", batch.seq)
                return
        finally:
            self._stalls.clear(id(buf))

    def _live(self, buf: _Buffer) -> list[Ticket]:
        """The buffer's tickets still to be written; fails those that may not wait any
        longer (the batcher gave up, or an earlier cut of the key was abandoned)."""
        with self._lock:
            buf.tickets = [t for t in buf.tickets if t.state is TicketState.PENDING]
            if buf.tickets and (self._giving_up() or buf.abandoned):
                error = BatcherClosedError(
                    "the batcher stopped before the spool took these records"
                    + ("" if self._giving_up() else " (an earlier batch was not spooled)")
                )
                buf.abandoned = buf.abandoned or any(t.retry for t in buf.tickets)
                for ticket in buf.tickets:
                    ticket.resolve(None, error)
                # Records added without retry were refused to their sender (HTTP 503);
                # the others were read from a source that is not told "no".
                rows = sum(t.rows for t in buf.tickets if t.retry)
                buf.tickets = []
                if rows:
                    log.error(
                        "pipeline %s: %d rows were not spooled before the stop (a file source "
                        "reads them again from its saved position at the next start; rows "
                        "from stdin or the generator are lost)",
                        buf.pipeline or buf.table,
                        rows,
                    )
            return list(buf.tickets)

    def _write(self, buf: _Buffer, live: list[Ticket]) -> SpooledBatch | None:
        meta: dict[str, Any] = {}
        for ticket in live:
            if ticket.meta:
                _merge(meta, ticket.meta)
        size = len(buf.header) + sum(len(t.records) for t in live)
        retrying = any(t.retry for t in live)
        reservation = self.spool.reserve(
            size + batch_overhead(buf.table, buf.pipeline, meta),
            give_up=lambda: self._giving_up() or not self._worth_waiting(live, retrying),
            on_wait=lambda: self._waiting(buf, live),
            memory=buf.memory,
        )
        with self._lock:  # from here on the records cannot be withdrawn
            live = [t for t in live if t.state is TicketState.PENDING]
            for ticket in live:
                ticket.state = TicketState.WRITING
        if not live:
            self.spool.release(reservation)
            return None
        meta = {}  # again: only the records that are written
        for ticket in live:
            if ticket.meta:
                _merge(meta, ticket.meta)
        try:
            batch = self.spool.write(
                reservation,
                buf.table,
                buf.header + b"".join(t.records for t in live),
                format=buf.format,
                rows=sum(t.rows for t in live),
                settings=buf.settings,
                pipeline=buf.pipeline,
                meta=meta,
                token=buf.token or None,
            )
        except BaseException:
            with self._lock:
                for ticket in live:
                    ticket.state = TicketState.PENDING
            raise
        with self._lock:
            for ticket in live:
                ticket.resolve(batch.seq, None)
        return batch

    @staticmethod
    def _worth_waiting(live: list[Ticket], retrying: bool) -> bool:
        if retrying:
            return True
        now = time.monotonic()
        return any(
            t.state is TicketState.PENDING and (t.deadline is None or now < t.deadline)
            for t in live
        )

    def _failed(self, buf: _Buffer, error: SpoolError) -> bool:
        """The spool refused the buffer's live records: fail those that may not wait;
        True if some remain to be retried."""
        with self._lock:
            gone = [t for t in buf.tickets if t.state is TicketState.PENDING and not t.retry]
            for ticket in gone:
                ticket.resolve(None, error)
            buf.tickets = [t for t in buf.tickets if t.state is TicketState.PENDING]
            retry = bool(buf.tickets)
        if gone:
            log.warning(
                "pipeline %s: could not spool %d rows for %s; their senders are told: %s",
                buf.pipeline or buf.table,
                sum(t.rows for t in gone),
                buf.table,
                error,
            )
        return retry

    def _waiting(self, buf: _Buffer, live: list[Ticket]) -> None:
        """The spool is full and its policy is to wait: the batch waits, producers with it
        (called from inside the spool's wait, so it only notes the state)."""
        self._stalls.waiting(id(buf), buf.pipeline, buf.table, sum(t.rows for t in live))

    def _sleep(self, seconds: float) -> None:
        """Back off, waking early when a batch leaves the spool or the batcher gives up."""
        deadline = time.monotonic() + seconds
        while not self._giving_up():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.spool.wait_for_room(min(remaining, 0.2)):
                return


def _merge(into: dict[str, Any], meta: Mapping[str, Any]) -> None:
    """Later values win; nested mappings (e.g. per-file positions) merge key by key."""
    for key, value in meta.items():
        old = into.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            old.update(value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
