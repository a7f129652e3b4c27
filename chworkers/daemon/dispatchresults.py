"""How a dispatched batch's insert ends: confirmed and removed, or kept and tried again.

:class:`DispatchResults` is the part of :class:`~chworkers.daemon.dispatch.Dispatcher`
that runs on its completion thread (never in a future's callback, which runs on the
supervisor's loop): a confirmed batch goes through ``on_done`` and leaves the spool; a
failed one stays spooled and waits its backoff (growing per batch), or
``permanent_error_backoff`` when the error is permanent (held, and reported, until a
batch of its table lands); a failing shard's backlog goes again once one of its batches
lands.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from chworkers.backoff import capped_backoff
from chworkers.daemon.batchfile import SpooledBatch
from chworkers.daemon.spool import Spool
from chworkers.wording import plural

__all__ = ["DispatchResults", "HeldBatch", "RetryAt", "shard_of"]

#: The dispatcher's logger, as before it was cut into modules (log filters keep working).
log = logging.getLogger("chworkers.daemon.dispatch")


@dataclasses.dataclass(order=True)
class RetryAt:
    """A failed batch's next try, no sooner than ``not_before`` (time.monotonic())."""

    not_before: float
    seq: int
    batch: SpooledBatch = dataclasses.field(compare=False)


@dataclasses.dataclass
class HeldBatch:
    """A batch held back by a permanent error."""

    table: str
    error: BaseException
    since: float  # wall clock, for people
    shard: int = 0


def shard_of(batch: SpooledBatch) -> int:
    """The shard of a cluster a spooled batch goes to (its part's; 0 for a batch that
    was not split: a ClickHouse that is not sharded is one shard)."""
    return int(batch.meta.get("shard", 0))


class DispatchResults:
    """A dispatched batch's end (see the module's docstring)."""

    spool: Spool
    on_done: Callable[[SpooledBatch, Any], None] | None
    on_failure: Callable[[SpooledBatch, BaseException], None] | None
    is_permanent: Callable[[BaseException], bool] | None
    initial_backoff: float
    max_backoff: float
    permanent_backoff: float
    shards: int
    confirmed: int
    _lock: threading.Lock
    _wake: threading.Condition
    _held: dict[int, HeldBatch]
    _completions: queue.SimpleQueue[tuple[SpooledBatch, SpooledBatch, Future[Any]] | None]
    _completing_since: float | None  # time.monotonic()
    _completing: int | None
    _pending: dict[int, deque[SpooledBatch]]
    _retries: dict[int, list[RetryAt]]
    _shard_flight: list[int]
    _failing: set[int]  # shards whose last attempt failed
    _failures: dict[int, int]
    _in_flight: dict[int, SpooledBatch]

    def _complete_loop(self) -> None:
        while (item := self._completions.get()) is not None:
            self._completing_since = time.monotonic()
            with self._lock:
                # Completing can wait on a disk (dead letters) or a broker (its ack): the
                # workers get the next batch meanwhile.
                self._completing = item[0].seq
                self._wake.notify()
            try:
                self._completed(*item)
            except Exception:  # never lose the thread; the batch stays spooled
                log.exception("completing batch %d failed", item[0].seq)
            finally:
                self._completing_since = None
                with self._lock:
                    self._completing = None

    def _completed(self, batch: SpooledBatch, full: SpooledBatch, future: Future[Any]) -> None:
        error = future.exception()
        if error is not None:
            permanent = self.is_permanent is not None and self.is_permanent(error)
            # A batch by reference that must wait is copied into the spool (its file may
            # be truncated meanwhile); ClickHouse's trouble has the others copied too.
            self.spool.attempt_failed(full, trouble=not permanent)
            self._failed(batch, error, permanent=permanent)
            return
        try:
            if self.on_done is not None:
                self.on_done(full, future.result())
            # A file that cannot be removed is a failed attempt too: tried again soon
            # (ClickHouse drops it by its token), not left "in flight" for good.
            self.spool.remove(batch)
        except Exception as exc:
            log.exception("completing inserted batch %d failed", batch.seq)
            self._failed(batch, exc)
            return
        self._finish(batch)

    def _finish(self, batch: SpooledBatch) -> None:
        with self._lock:
            self._landed_locked(batch)
            self._failures.pop(batch.seq, None)
            if shard_of(batch) in self._failing:  # the shard is back: its backlog goes now
                self._failing.discard(shard_of(batch))
                self._retry_shard_locked(shard_of(batch))
            if self._held.pop(batch.seq, None) is not None or self._held:
                # The table takes inserts again: its other held batches go now too.
                self._release_locked(batch.table, shard_of(batch))
            self.confirmed += 1
            self._wake.notify_all()

    def _retry_shard_locked(self, shard: int) -> None:
        retries = self._retries[shard]
        for item in retries:
            if item.batch.seq not in self._held:
                item.not_before = 0.0
        heapq.heapify(retries)

    def _landed_locked(self, batch: SpooledBatch) -> None:
        """A batch is no longer in flight (under the lock)."""
        if self._in_flight.pop(batch.seq, None) is not None:
            self._shard_flight[shard_of(batch)] -= 1

    def _release_locked(self, table: str, shard: int) -> None:
        held = self._held.items()
        for seq in [seq for seq, h in held if h.table == table and h.shard == shard]:
            del self._held[seq]
        retries = self._retries[shard]
        for item in retries:
            if item.batch.table == table:
                item.not_before = 0.0
        heapq.heapify(retries)

    def _failed(
        self, batch: SpooledBatch, error: BaseException, *, permanent: bool = False
    ) -> None:
        shard = shard_of(batch)
        with self._lock:
            self._landed_locked(batch)
            if not permanent and self.shards > 1:  # a permanent error is the table's
                self._failing.add(shard)
            failures = self._failures.get(batch.seq, 0) + 1
            self._failures[batch.seq] = failures
            if permanent:
                backoff = self.permanent_backoff
                held = self._held.get(batch.seq)
                since = held.since if held is not None else time.time()
                self._held[batch.seq] = HeldBatch(batch.table, error, since, shard)
            else:
                backoff = capped_backoff(self.initial_backoff, failures, self.max_backoff)
                self._held.pop(batch.seq, None)
            heapq.heappush(
                self._retries[shard], RetryAt(time.monotonic() + backoff, batch.seq, batch)
            )
            self._wake.notify_all()
        log.log(
            logging.ERROR if permanent else logging.WARNING,
            "batch %d (%s for %s) failed (attempt %d%s), kept in the spool, next try in "
            "%.3g s%s: %s",
            batch.seq,
            plural(batch.rows, "row"),
            batch.table,
            failures,
            ", a permanent error" if permanent else "",
            backoff,
            " or on SIGHUP" if permanent else "",
            error,
        )
        if self.on_failure is not None:
            self.on_failure(batch, error)
