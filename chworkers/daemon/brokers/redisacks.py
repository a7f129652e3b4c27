"""The Redis source's acknowledgements of inserted batches, sent by a thread of their own
(docs/brokers.md, "A batch's life", step 6).

The daemon's completion thread hands a batch ClickHouse confirmed to
:meth:`Acknowledger.add` and goes on with the next one at once: it no longer waits for
the ``MULTI``/``EXEC`` that acknowledges the batch's entries and removes its manifest
(with ``appendfsync always`` a round trip and an fsync, 30 to 700 ms on a loaded
machine), so with one worker the insert after it is not held back while Redis writes
(a batch whose insert ended waits for the completion thread, and counts as in flight
meanwhile). The acknowledgements that queue up while one is being sent go together in
the next transaction: one round trip and one fsync for all of them.

Exactly once is unchanged: a batch is acknowledged only after ClickHouse confirmed it.
Until Redis took its acknowledgement the source keeps the batch among those it holds:
its entries' idle time and its manifest's TTL are refreshed (nobody claims them), and a
claim of them is left to it. An acknowledgement that fails (Redis down, a failover) is
sent again with a backoff until Redis takes it, the source degraded meanwhile. A daemon
that stops or dies before then leaves the entries pending with their manifest: rebuilt
at its next start (or by another daemon after ``claim_idle``) with the same token, and
dropped by ClickHouse as a duplicate, as when it died between the insert and the
acknowledgement before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from chworkers.daemon.brokers.common import RETRY_INITIAL, RETRY_MAX
from chworkers.daemon.brokers.trouble import Trouble
from chworkers.errors import BrokerError
from chworkers.wording import plural

log = logging.getLogger(__name__)

#: Entry ids acknowledged in one transaction at most (the batches queued beyond them go
#: in the next one): Redis runs a transaction whole, other clients waiting meanwhile.
MAX_IDS = 100_000

#: What sends acknowledgements: ``(ids, token)`` of batches, in one transaction; returns
#: how many entries were still pending (raises :class:`BrokerError`).
Send = Callable[[Sequence[tuple[list[str], str]]], int]
#: Told which batches Redis acknowledged (their tokens), and how many entries were pending.
Done = Callable[[list[str], int], None]


class Acknowledger:
    """Acknowledges the batches :meth:`add` is given, in a thread (started with the first
    one), as many at once as are queued; ``trouble``: where a failure shows in health."""

    def __init__(self, name: str, send: Send, done: Done, trouble: Trouble) -> None:
        self.name = name
        self._send = send
        self._done = done
        self.trouble = trouble
        self._lock = threading.Condition()
        self._queue: deque[tuple[list[str], str]] = deque()
        self._sending = 0  # batches taken from the queue, their transaction not answered
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, ids: list[str], token: str) -> None:
        """Acknowledge the batch ``token`` of ``ids`` (ClickHouse confirmed it) soon."""
        with self._lock:
            self._queue.append((ids, token))
            self._closed = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name=f"source-{self.name}-acks", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()

    def waiting(self) -> int:
        """Batches inserted whose acknowledgement Redis has not taken yet."""
        with self._lock:
            return len(self._queue) + self._sending

    def wait(self, timeout: float) -> bool:
        """Up to ``timeout`` seconds for every batch given to be acknowledged."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._sending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def close(self, timeout: float) -> int:
        """Up to ``timeout`` seconds for the acknowledgements left, then stop the thread;
        returns how many batches were not acknowledged (their entries stay pending, with
        their manifests: rebuilt and dropped by ClickHouse as duplicates)."""
        self.wait(timeout)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            return len(self._queue) + self._sending

    def _take(self) -> list[tuple[list[str], str]] | None:
        """The batches to acknowledge next (None: closed); waits for one."""
        with self._lock:
            while not self._queue:
                if self._closed:
                    return None
                self._lock.wait()
            taken: list[tuple[list[str], str]] = []
            ids = 0
            while self._queue and (not taken or ids + len(self._queue[0][0]) <= MAX_IDS):
                taken.append(self._queue.popleft())
                ids += len(taken[-1][0])
            self._sending = len(taken)
            return taken

    def _run(self) -> None:
        backoff = RETRY_INITIAL
        while (taken := self._take()) is not None:
            try:
                acked = self._send(taken)
            except BrokerError as exc:
                why = str(exc).removeprefix(f"{self.trouble.what}: ")
                self.trouble.failing(
                    f"{self.trouble.what}: acknowledging {plural(len(taken), 'batch', 'batches')}: {why}"
                )
                with self._lock:
                    self._queue.extendleft(reversed(taken))  # first again, in order
                    self._sending = 0
                    self._lock.notify_all()
                    if not self._closed:
                        self._lock.wait(backoff)  # add() wakes it early: tried at once
                    if self._closed:
                        return
                backoff = min(RETRY_MAX, backoff * 2)
                continue
            except Exception:  # a bug must not end the thread: the batches wait
                log.exception("source %s: acknowledging batches failed", self.name)
                with self._lock:
                    self._queue.extendleft(reversed(taken))
                    self._sending = 0
                    self._lock.notify_all()
                    self._lock.wait(RETRY_MAX)
                    if self._closed:
                        return
                continue
            self.trouble.ok()
            backoff = RETRY_INITIAL
            try:
                self._done([token for _ids, token in taken], acked)
            finally:
                with self._lock:
                    self._sending = 0
                    self._lock.notify_all()


__all__ = ["MAX_IDS", "Acknowledger", "Done", "Send"]
