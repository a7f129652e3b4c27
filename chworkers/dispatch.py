"""The dispatcher: the spool is the queue, memory holds only what is being inserted.

Spooled batches wait on disk. The dispatcher keeps at most ``max_in_flight`` of them in
memory, submitted to the workers; when one is confirmed it is removed from the spool
and the next is read from disk. A batch whose insert failed stays in the spool and is
tried again after a backoff that grows per batch (1 s, 2 s, 4 s ... up to
``max_backoff``): nothing is ever dropped because ClickHouse was down or a table was
missing. So during an outage the spool grows on disk while memory stays flat, and when
ClickHouse is back the backlog drains in spool order.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from chworkers.errors import ChworkersError, SpoolCorruptError
from chworkers.retry import capped_backoff
from chworkers.spool import Spool, SpooledBatch, read_batch

log = logging.getLogger(__name__)

Submit = Callable[[SpooledBatch], "Future[Any]"]
Done = Callable[[SpooledBatch, Any], None]


@dataclasses.dataclass(order=True)
class _Retry:
    not_before: float
    seq: int
    batch: SpooledBatch = dataclasses.field(compare=False)


class Dispatcher:
    """Feeds spooled batches to ``submit`` with bounded memory and per-batch backoff.

    ``on_done(batch, result)`` runs after a confirmed insert, before the batch leaves the
    spool (the daemon writes dead letters there); ``on_failure(batch, error)`` is told of
    every failed attempt.
    """

    def __init__(
        self,
        spool: Spool,
        submit: Submit,
        *,
        on_done: Done | None = None,
        on_failure: Callable[[SpooledBatch, BaseException], None] | None = None,
        max_in_flight: int = 8,
        initial_backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        self.spool = spool
        self.submit = submit
        self.on_done = on_done
        self.on_failure = on_failure
        self.max_in_flight = max_in_flight
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[SpooledBatch] = deque()
        self._retries: list[_Retry] = []
        self._failures: dict[int, int] = {}
        self._in_flight: dict[int, SpooledBatch] = {}
        self._stopped = False
        self.confirmed = 0
        self._thread = threading.Thread(target=self._run, name="chworkers-dispatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, batch: SpooledBatch) -> None:
        """Queue a spooled batch; only its description stays in memory."""
        with self._lock:
            self._pending.append(dataclasses.replace(batch, payload=b""))
            self._wake.notify()

    def backlog(self) -> int:
        """Batches not yet confirmed (pending, waiting to retry, or in flight)."""
        with self._lock:
            return len(self._pending) + len(self._retries) + len(self._in_flight)

    def retry_now(self) -> None:
        """Give batches waiting out a backoff their next attempt at once."""
        with self._lock:
            for item in self._retries:
                item.not_before = 0.0
            heapq.heapify(self._retries)
            self._wake.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Until every batch is confirmed (True) or ``timeout`` passes (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._pending or self._retries or self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wake.wait(remaining if remaining is None else min(remaining, 0.5))
        return True

    def stop(self) -> None:
        """Stop submitting; batches not confirmed stay in the spool for the next start."""
        with self._lock:
            self._stopped = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

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
            self._send(batch)

    def _next_locked(self) -> SpooledBatch | None:
        if self._stopped or len(self._in_flight) >= self.max_in_flight:
            return None
        if self._retries and self._retries[0].not_before <= time.monotonic():
            return heapq.heappop(self._retries).batch
        if self._pending:
            return self._pending.popleft()
        return None

    def _sleep_locked(self) -> float | None:
        if self._retries and len(self._in_flight) < self.max_in_flight:
            return max(0.01, self._retries[0].not_before - time.monotonic())
        return None

    def _send(self, batch: SpooledBatch) -> None:
        try:
            assert batch.path is not None
            full = read_batch(batch.path)
        except (SpoolCorruptError, AssertionError) as exc:
            log.error("batch %d cannot be read back from the spool: %s", batch.seq, exc)
            self._finish(batch)
            return
        try:
            future = self.submit(full)
        except ChworkersError as exc:
            self._failed(batch, exc)
            return
        future.add_done_callback(lambda f: self._completed(batch, full, f))

    def _completed(self, batch: SpooledBatch, full: SpooledBatch, future: Future[Any]) -> None:
        error = future.exception()
        if error is not None:
            self._failed(batch, error)
            return
        try:
            if self.on_done is not None:
                self.on_done(full, future.result())
        except Exception as exc:
            log.exception("handling the result of batch %d failed", batch.seq)
            self._failed(batch, exc)
            return
        self.spool.remove(batch)
        self._finish(batch)

    def _finish(self, batch: SpooledBatch) -> None:
        with self._lock:
            self._in_flight.pop(batch.seq, None)
            self._failures.pop(batch.seq, None)
            self.confirmed += 1
            self._wake.notify_all()

    def _failed(self, batch: SpooledBatch, error: BaseException) -> None:
        with self._lock:
            self._in_flight.pop(batch.seq, None)
            failures = self._failures.get(batch.seq, 0) + 1
            self._failures[batch.seq] = failures
            backoff = capped_backoff(self.initial_backoff, failures, self.max_backoff)
            heapq.heappush(self._retries, _Retry(time.monotonic() + backoff, batch.seq, batch))
            self._wake.notify_all()
        log.warning(
            "batch %d (%d rows for %s) failed (attempt %d), kept in the spool, next try in "
            "%.0f s: %s",
            batch.seq,
            batch.rows,
            batch.table,
            failures,
            backoff,
            error,
        )
        if self.on_failure is not None:
            self.on_failure(batch, error)
