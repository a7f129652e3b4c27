"""Writing a cut batch to the spool: in order per key, retried or refused as its adds asked.

:class:`BatchSpooling` is the part of :class:`~chworkers.daemon.batcher.Batcher` that
runs after a cut, outside the batcher's lock: it waits for the key's previous cut, writes
the records still wanted (a push request answered meanwhile withdraws its own), resolves
the tickets, and hands the spooled batch on; when the spool refuses it, records added
with ``retry`` are written again with a growing backoff and the others fail at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from chworkers.daemon import extents
from chworkers.daemon.batchbuffer import Buffer, BufferKey
from chworkers.daemon.batchfile import SpooledBatch, batch_overhead
from chworkers.daemon.extents import Extent
from chworkers.daemon.spool import Spool
from chworkers.daemon.stalls import Stalls
from chworkers.daemon.ticket import Ticket, TicketState
from chworkers.errors import BatcherClosedError, SpoolError
from chworkers.wording import plural

__all__ = ["RETRY_INITIAL", "RETRY_MAX", "BatchSpooling"]

#: The batcher's logger, as before it was cut into modules (log filters keep working).
log = logging.getLogger("chworkers.daemon.batcher")

#: Backoff between attempts to spool a batch the spool refused (seconds).
RETRY_INITIAL = 0.1
RETRY_MAX = 2.0


class BatchSpooling:
    """A cut batch's way into the spool (see the module's docstring)."""

    spool: Spool
    on_batch: Callable[[SpooledBatch], None]
    _lock: threading.Lock
    _last_cut: dict[BufferKey, Buffer]
    _stalls: Stalls
    _give_up_at: float | None  # time.monotonic(); None: never

    def _giving_up(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

    def _cut(self, buf: Buffer) -> None:
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

    def _spool(self, buf: Buffer) -> None:
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

    def _live(self, buf: Buffer) -> list[Ticket]:
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
                        "pipeline %s: %s not spooled before the stop (a file source "
                        "reads them again from its saved position at the next start; rows "
                        "from stdin or the generator are lost)",
                        buf.pipeline or buf.table,
                        plural(rows, "row"),
                    )
            return list(buf.tickets)

    def _write(self, buf: Buffer, live: list[Ticket]) -> SpooledBatch | None:
        meta: dict[str, Any] = {}
        for ticket in live:
            if ticket.meta:
                _merge(meta, ticket.meta)
        refs = _references(buf, live)
        # A batch kept by reference counts its records against the cap as a copy would.
        size = len(buf.header) + sum(len(t.records) for t in live)
        retrying = any(t.retry for t in live)
        reservation = self.spool.reserve(
            size + batch_overhead(buf.table, buf.pipeline, meta, refs),
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
        # Of the records still wanted; copied while ClickHouse is in trouble (they wait).
        refs = _references(buf, live, sampled=True) if refs else ()
        if refs and not self.spool.takes_references():
            refs = ()
        try:
            batch = self.spool.write(
                reservation,
                buf.table,
                b"" if refs else buf.header + b"".join(t.records for t in live),
                format=buf.format,
                rows=sum(t.rows for t in live),
                settings=buf.settings,
                pipeline=buf.pipeline,
                meta=meta,
                token=buf.token or None,
                refs=refs,
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

    def _failed(self, buf: Buffer, error: SpoolError) -> bool:
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
                "pipeline %s: could not spool %s for %s; their senders are told: %s",
                buf.pipeline or buf.table,
                plural(sum(t.rows for t in gone), "row"),
                buf.table,
                error,
            )
        return retry

    def _waiting(self, buf: Buffer, live: list[Ticket]) -> None:
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


def _references(buf: Buffer, live: list[Ticket], *, sampled: bool = False) -> tuple[Extent, ...]:
    """The batch's records by reference, when every one of them has its place in a file
    (and the batch goes to disk as it is: no header of its own, no caller's token);
    ``sampled``: with the checksums of their samples (:func:`extents.sample_crc`)."""
    if buf.memory or buf.header or buf.token or not live:
        return ()
    if any(t.extent is None for t in live):
        return ()
    if sampled:
        return extents.merge_records((t.extent, t.records) for t in live if t.extent)
    return extents.merge(t.extent for t in live if t.extent is not None)
