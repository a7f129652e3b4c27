"""The dispatcher: the spool is the queue, memory holds only what is being inserted.

Spooled batches wait on disk. The dispatcher keeps at most ``max_in_flight`` of them in
memory, submitted to the workers (and the one being completed: the next insert does not
wait for the last one's completion); when one is confirmed it is removed from the spool
and the next is read from disk. A batch whose insert failed stays in the spool and is
tried again after a backoff that grows per batch (1 s, 2 s, 4 s ... up to
``retry_backoff_max``): nothing is ever dropped because ClickHouse was down or a table was
missing. So during an outage the spool grows on disk while memory stays flat, and when
ClickHouse is back the backlog drains in spool order. (Broker pipelines' batches wait in
the spool's memory tier instead, bounded by its own cap: :mod:`chworkers.daemon.memorytier`.)

A batch that failed with a *permanent* error (``is_permanent``: the retry policy's
classification, e.g. an unknown table or a failed authentication) is not retried hot:
it stays spooled and waits ``permanent_error_backoff`` (or :meth:`Dispatcher.retry_now`, which
the daemon calls on SIGHUP), and :meth:`Dispatcher.problems` reports it until a batch
for that table is confirmed.

With a sharded cluster (``shards``: each batch a part for one shard, its meta's
``shard``), each shard has its own queue and a fair share of ``max_in_flight``, taken in
turn, and a shard whose last attempt failed gets one batch at a time (its probe) until
one lands, when its waiting batches go at once: a shard that is down or hangs holds back
only its own batches, never the slots (nor the workers) of the others.

How an insert ends (confirmed, or kept and tried again) is
:mod:`chworkers.daemon.dispatchresults`'s part of the dispatcher.

The dispatcher is the outermost of the retry layers (see docs/daemon.md, "Retry
layers"): it retries only whole tasks that the layers below gave up on.

Completion (``on_done``: writing dead letters, fsync'd; then removing the batch from the
spool) runs on the dispatcher's own completion thread, never in a future's callback:
those run on the supervisor's loop thread, which must not wait on disks or locks. A
batch leaves the spool only after ``on_done`` returned; when ``on_done`` or the removal fails, that is a
failed attempt: the batch is tried again (ClickHouse drops what it already has by the
batch's token) until it leaves the spool.
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
from typing import Any, Protocol

from chworkers.daemon.batchfile import SpooledBatch
from chworkers.daemon.dispatchresults import DispatchResults, HeldBatch, RetryAt
from chworkers.daemon.dispatchresults import shard_of as shard_of
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool
from chworkers.errors import ChworkersError, ServerError, SpoolCorruptError
from chworkers.workers.options import SupervisorOptions

log = logging.getLogger(__name__)

Submit = Callable[[SpooledBatch], "Future[Any]"]
Done = Callable[[SpooledBatch, Any], None]


class Throttle(Protocol):
    """Whether a table's batches may go now (the daemon's
    :class:`~chworkers.daemon.partspressure.PartsPressure`)."""

    def delay(self, table: str, in_flight: int) -> float:
        """Seconds before a batch of ``table`` may go (0: now), ``in_flight`` of its
        batches being inserted."""
        ...

    def sent(self, table: str) -> None:
        """A batch of ``table`` went."""
        ...


class Dispatcher(DispatchResults):
    """Feeds spooled batches to ``submit`` with bounded memory and per-batch backoff.

    ``on_done(batch, result)`` runs after a confirmed insert, before the batch leaves the
    spool (the daemon writes dead letters there); ``on_failure(batch, error)`` is told of
    every failed attempt. ``is_permanent(error)`` says which failures retrying soon
    cannot fix; those batches wait ``permanent_error_backoff`` seconds.

    ``settings`` (the spool's when not given) say how many batches may be in flight
    (``max_in_flight``; 0: twice ``workers``, the processes ``submit`` feeds) and how long
    failed batches wait (``retry_backoff_max``, ``permanent_error_backoff``). The backoff
    starts at ``initial_backoff`` seconds.
    """

    def __init__(
        self,
        spool: Spool,
        submit: Submit,
        settings: SpoolSettings | None = None,
        *,
        workers: int = SupervisorOptions.workers,
        shards: int = 1,
        on_done: Done | None = None,
        on_failure: Callable[[SpooledBatch, BaseException], None] | None = None,
        is_permanent: Callable[[BaseException], bool] | None = None,
        initial_backoff: float = 1.0,
        throttle: Throttle | None = None,
    ) -> None:
        self.spool = spool
        self.submit = submit
        self.settings = settings = settings or spool.settings
        self.on_done = on_done
        self.on_failure = on_failure
        self.max_in_flight = settings.max_in_flight or 2 * workers
        self.initial_backoff = initial_backoff
        self.max_backoff = settings.retry_backoff_max
        self.is_permanent = is_permanent
        self.throttle = throttle
        self.permanent_backoff = settings.permanent_error_backoff
        self._held: dict[int, HeldBatch] = {}
        self._completions: queue.SimpleQueue[
            tuple[SpooledBatch, SpooledBatch, Future[Any]] | None
        ] = queue.SimpleQueue()
        self._completer = threading.Thread(
            target=self._complete_loop, name="chworkers-complete", daemon=True
        )
        self._completing_since: float | None = None  # time.monotonic()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # Per shard: a shard that is down or slow holds back only its own batches.
        self.shards = max(1, shards)
        self._pending: dict[int, deque[SpooledBatch]] = {i: deque() for i in range(self.shards)}
        self._retries: dict[int, list[RetryAt]] = {i: [] for i in range(self.shards)}
        self._shard_flight = [0] * self.shards
        self._failing: set[int] = set()  # shards whose last attempt failed
        self._turn = 0
        self._failures: dict[int, int] = {}
        self._in_flight: dict[int, SpooledBatch] = {}
        #: The one in-flight batch being completed (inserted; on_done and the spool's
        #: removal running): its slot is free for the next insert meanwhile.
        self._completing: int | None = None
        self._stopped = False
        self._sending_since: float | None = None  # while the thread hands a batch over
        self.confirmed = 0
        self._thread = threading.Thread(target=self._run, name="chworkers-dispatch", daemon=True)

    def resize(self, workers: int) -> None:
        """The worker count changed (SIGHUP, autoscaling): with ``max_in_flight = 0`` the
        batches handed to the workers at once follow it (twice the workers)."""
        with self._lock:
            self.max_in_flight = self.settings.max_in_flight or 2 * workers
            self._wake.notify_all()

    def start(self) -> None:
        self._completer.start()
        self._thread.start()

    def add(self, batch: SpooledBatch) -> None:
        """Queue a spooled batch; only its description stays in memory."""
        with self._lock:
            self._queue(batch).append(dataclasses.replace(batch, payload=b""))
            self._wake.notify()

    def _queue(self, batch: SpooledBatch) -> deque[SpooledBatch]:
        shard = shard_of(batch)
        if not 0 <= shard < self.shards:
            # Spooled for a shard the configuration no longer has: kept in the spool,
            # never sent elsewhere (another shard would not deduplicate it).
            log.error(
                "batch %d is for shard %d, but the cluster has %d shards: it stays in the "
                "spool until the shard is configured again",
                batch.seq,
                shard,
                self.shards,
            )
            return deque()
        return self._pending[shard]

    def backlog(self) -> int:
        """Batches not yet confirmed (pending, waiting to retry, or in flight)."""
        with self._lock:
            return (
                sum(map(len, self._pending.values()))
                + sum(map(len, self._retries.values()))
                + len(self._in_flight)
            )

    def shard_backlog(self) -> list[int]:
        """Per shard, its batches not yet confirmed (pending, waiting, in flight)."""
        with self._lock:
            return [
                len(self._pending[i]) + len(self._retries[i]) + self._shard_flight[i]
                for i in range(self.shards)
            ]

    def problems(self) -> list[str]:
        """Why the dispatcher is degraded, one line per table and error (empty: fine).

        E.g. ``table db.events: UNKNOWN_TABLE (60) since 14:31:02 UTC, 3 batches held``.
        """
        with self._lock:
            held = list(self._held.values())
        groups: dict[tuple[str, str], list[HeldBatch]] = {}
        for item in held:
            groups.setdefault((item.table, _describe(item.error)), []).append(item)
        lines = []
        for (table, what), items in sorted(groups.items()):
            since = time.strftime("%H:%M:%S", time.gmtime(min(i.since for i in items)))
            n = len(items)
            lines.append(
                f"table {table}: {what} since {since} UTC, {n} batch{'es' if n > 1 else ''} "
                f"held (retried every {self.permanent_backoff:g} s and on SIGHUP)"
            )
        return lines

    def retry_now(self) -> None:
        """Give batches waiting out a backoff their next attempt at once."""
        with self._lock:
            for retries in self._retries.values():
                for item in retries:
                    item.not_before = 0.0
                heapq.heapify(retries)
            self._wake.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Until every batch is confirmed (True) or ``timeout`` passes (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._in_flight or any(self._pending.values()) or any(self._retries.values()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wake.wait(remaining if remaining is None else min(remaining, 0.5))
        return True

    def thread_problems(self, stuck_after: float = 60.0) -> list[str]:
        """Whether the dispatching thread died, or hangs handing one batch over (for the
        daemon's health: either way spooled batches are no longer sent)."""
        with self._lock:
            stopped, since = self._stopped, self._sending_since
        if stopped or self._thread.ident is None:
            return []
        if not self._thread.is_alive():
            return ["the dispatcher thread died: spooled batches are no longer sent"]
        if since is not None and time.monotonic() - since > stuck_after:
            return [
                f"the dispatcher has been stuck handing one batch to the workers for "
                f"{time.monotonic() - since:.0f} s"
            ]
        if self._completer.ident is not None and not self._completer.is_alive():
            return ["the completion thread died: inserted batches no longer leave the spool"]
        completing = self._completing_since
        if completing is not None and time.monotonic() - completing > stuck_after:
            return [
                f"completing one inserted batch (dead letters, then leaving the spool) has "
                f"taken {time.monotonic() - completing:.0f} s"
            ]
        return []

    def stop(self) -> None:
        """Stop submitting; batches not confirmed stay in the spool for the next start."""
        with self._lock:
            self._stopped = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        # Completions already in hand still finish (a confirmed batch leaves the spool);
        # bounded, so that a stop stays bounded: one not finished stays spooled and is
        # replayed, harmlessly, at the next start.
        self._completions.put(None)
        if self._completer.is_alive():
            self._completer.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._lock:
                batch = self._next_locked()
                while batch is None:
                    if self._stopped:
                        return
                    self._wake.wait(self._sleep_locked())
                    batch = self._next_locked()
                self._in_flight[batch.seq] = batch
                self._shard_flight[shard_of(batch)] += 1
                self._sending_since = time.monotonic()
            try:
                self._send(batch)
            finally:
                with self._lock:
                    self._sending_since = None

    def _shard_room_locked(self, shard: int) -> bool:
        """Whether ``shard`` may have one more batch in flight: a fair share of
        ``max_in_flight`` each (all of it with one shard), and one while its last
        attempt failed (a probe), so a shard that is down or hangs cannot take the
        slots, nor the workers, of the others."""
        cap = 1 if shard in self._failing else -(-self.max_in_flight // self.shards)
        completing = None if self._completing is None else self._in_flight.get(self._completing)
        flight = self._shard_flight[shard] - (
            completing is not None and shard_of(completing) == shard
        )
        return flight < cap

    def _next_locked(self) -> SpooledBatch | None:
        while True:
            batch = self._candidate_locked()
            if batch is None or self.throttle is None:
                return batch
            in_flight = sum(1 for b in self._in_flight.values() if b.table == batch.table)
            wait = self.throttle.delay(batch.table, in_flight)
            if wait <= 0:
                self.throttle.sent(batch.table)
                return batch
            # Its table is slowed down: the batch waits its turn (not a failed attempt),
            # and batches of other tables go meanwhile.
            heapq.heappush(
                self._retries[shard_of(batch)], RetryAt(time.monotonic() + wait, batch.seq, batch)
            )

    def _candidate_locked(self) -> SpooledBatch | None:
        if self._stopped or self._inserting_locked() >= self.max_in_flight:
            return None
        now = time.monotonic()
        for step in range(self.shards):  # in turn, so that every shard gets its share
            shard = (self._turn + step) % self.shards
            if not self._shard_room_locked(shard):
                continue
            retries, pending = self._retries[shard], self._pending[shard]
            if retries and retries[0].not_before <= now:
                batch = heapq.heappop(retries).batch
            elif pending and (shard not in self._failing or not retries):
                # A shard that is failing gets new batches only as its probe: its failed
                # ones wait out their backoff, and so do the rest.
                batch = pending.popleft()
            else:
                continue
            self._turn = (shard + 1) % self.shards
            return batch
        return None

    def _sleep_locked(self) -> float | None:
        if self._inserting_locked() >= self.max_in_flight:
            return None
        due = [
            retries[0].not_before
            for shard, retries in self._retries.items()
            if retries and self._shard_room_locked(shard)
        ]
        return max(0.01, min(due) - time.monotonic()) if due else None

    def _inserting_locked(self) -> int:
        """In-flight batches not yet inserted (so at most one more payload is in memory
        than ``max_in_flight``: the one being completed)."""
        return len(self._in_flight) - (self._completing in self._in_flight)

    def _send(self, batch: SpooledBatch) -> None:
        try:
            full = self.spool.load(batch)
        except SpoolCorruptError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError):
                # The read failed (EIO, EMFILE...), not the batch: try it again later.
                self._failed(batch, exc)
                return
            log.error("batch %d cannot be read back from the spool: %s", batch.seq, exc)
            self._finish(batch)
            return
        try:
            future = self.submit(full)
        except ChworkersError as exc:
            self.spool.attempt_failed(full)
            self._failed(batch, exc)
            return
        except Exception as exc:  # a bug must cost the batch an attempt, not this thread
            log.exception("submitting batch %d failed unexpectedly", batch.seq)
            self.spool.attempt_failed(full)
            self._failed(batch, exc)
            return
        # Only a hand-over here: this callback runs on the supervisor's loop thread.
        future.add_done_callback(lambda f: self._completions.put((batch, full, f)))


def _describe(error: BaseException) -> str:
    if isinstance(error, ServerError) and error.code is not None:
        return f"{error.name or 'error'} ({error.code})"
    first = str(error).splitlines()[0][:160] if str(error) else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
