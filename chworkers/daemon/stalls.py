"""Batches the spool has not taken yet: what the batcher reports while it waits.

A cut batch that the spool refuses (full under the ``reject`` policy, its disk full or
failing) is tried again with a backoff; one that waits for room (the ``block`` policy)
waits. Either way it is a stall: :meth:`Stalls.problems` says which pipeline waits, with
how many rows, for how long and why (the daemon's health shows it), the
``chworkers_spool_waiting_rows`` gauge counts the rows, and a refusal is logged at most
every :data:`LOG_EVERY` seconds per batch, and once more when the spool takes it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from chworkers.ops.metrics import Metrics
from chworkers.wording import plural

__all__ = ["LOG_EVERY", "Stalls"]

log = logging.getLogger(__name__)

#: A stalled batch is logged again at most this often (seconds).
LOG_EVERY = 30.0


@dataclasses.dataclass
class _Stall:
    pipeline: str
    table: str
    rows: int
    since: float
    attempts: int = 0
    error: str = ""
    logged: float = 0.0


class Stalls:
    """The batcher's batches that wait for the spool, by a key of the batcher's."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        self._stalls: dict[int, _Stall] = {}

    def waiting(self, key: int, pipeline: str, table: str, rows: int) -> None:
        """The spool is full and its policy is to wait: the batch waits, producers with it."""
        with self._lock:
            if key not in self._stalls:
                stall = _Stall(pipeline, table, rows, time.monotonic())
                stall.error = "the spool is full; waiting for ClickHouse to take batches"
                self._stalls[key] = stall
        self._publish()

    def refused(self, key: int, pipeline: str, table: str, rows: int, error: Exception) -> None:
        """The spool refused the batch (another attempt follows)."""
        now = time.monotonic()
        with self._lock:
            stall = self._stalls.get(key)
            if stall is None:
                stall = self._stalls[key] = _Stall(pipeline, table, rows, now)
            stall.attempts += 1
            stall.rows = rows
            stall.error = str(error)
            log_now = now - stall.logged >= LOG_EVERY
            if log_now:
                stall.logged = now
            attempts, since = stall.attempts, stall.since
        self._publish()
        if log_now:
            log.warning(
                "pipeline %s: the spool refused a batch of %s (attempt %d, for %.0f s): "
                "%s; the source waits and its position stays before these rows until the "
                "spool takes them",
                pipeline or table,
                plural(rows, "row"),
                attempts,
                now - since,
                error,
            )

    def taken(self, key: int, rows: int) -> None:
        """The spool took the batch: say so if it had refused it before."""
        with self._lock:
            stall = self._stalls.get(key)
        if stall is not None and stall.attempts:
            log.info(
                "pipeline %s: the spool took the batch of %s after %s in %.1f s",
                stall.pipeline or stall.table,
                plural(rows, "row"),
                plural(stall.attempts, "failed attempt"),
                time.monotonic() - stall.since,
            )

    def clear(self, key: int) -> None:
        """The batch is spooled or given up on: it no longer waits."""
        with self._lock:
            stalled = self._stalls.pop(key, None) is not None
        if stalled:
            self._publish()

    def problems(self) -> list[str]:
        """Batches the spool has not taken yet, and why (empty when it keeps up)."""
        now = time.monotonic()
        with self._lock:
            return [
                f"pipeline {s.pipeline or s.table}: a batch of {plural(s.rows, 'row')} has waited "
                f"{now - s.since:.0f} s for the spool"
                + (f" ({plural(s.attempts, 'failed attempt')})" if s.attempts else "")
                + f": {s.error}"
                for s in self._stalls.values()
            ]

    def _publish(self) -> None:
        if self.metrics is None:
            return
        with self._lock:
            rows = sum(s.rows for s in self._stalls.values())
        self.metrics.spool_waiting_rows.set(rows)
