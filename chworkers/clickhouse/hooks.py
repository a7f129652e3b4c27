"""Pool events: no-op :class:`PoolHooks` to subclass, and :class:`MetricsHooks`.

A :class:`~chworkers.clickhouse.pool.ConnectionPool` calls its hooks outside its lock, after the
fact; an exception raised by a hook is logged and otherwise ignored (observability must
never break ingestion). :class:`MetricsHooks` feeds the pool instruments declared in
:mod:`chworkers.ops.metrics`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chworkers.ops.metrics import Metrics

__all__ = ["MetricsHooks", "PoolHooks"]

log = logging.getLogger(__name__)


class PoolHooks:
    """Override the events you care about; every method defaults to doing nothing."""

    def on_acquire(self, wait_seconds: float) -> None:
        """A caller got a connection after waiting ``wait_seconds``."""

    def on_release(self) -> None:
        """A connection came back."""

    def on_timeout(self, wait_seconds: float) -> None:
        """A caller gave up waiting (``PoolTimeoutError``)."""

    def on_connection_created(self, endpoint: str) -> None:
        """A connection to ``endpoint`` was opened."""

    def on_connection_closed(self, endpoint: str, reason: str) -> None:
        """A connection was closed; ``reason`` is idle, lifetime, broken, host_down, resize or shutdown."""

    def on_error(self, kind: str, code: int | None) -> None:
        """An operation failed (``kind`` as in :func:`chworkers.clickhouse.retry.error_kind`)."""

    def on_retry(self, kind: str, attempt: int, backoff: float) -> None:
        """An operation is retried after ``backoff`` seconds."""

    def on_state(self, in_use: int, idle: int, waiting: int, maximum: int) -> None:
        """The pool's occupancy after a change."""


class MetricsHooks(PoolHooks):
    """Records pool events into a :class:`~chworkers.ops.metrics.Metrics` set of instruments."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_acquire(self, wait_seconds: float) -> None:
        self.metrics.pool_acquire_wait.observe(wait_seconds)

    def on_timeout(self, wait_seconds: float) -> None:
        self.metrics.pool_acquire_wait.observe(wait_seconds)
        self.metrics.errors.labels(kind="pool", code="").inc()

    def on_connection_created(self, endpoint: str) -> None:
        self.metrics.pool_created.inc()

    def on_connection_closed(self, endpoint: str, reason: str) -> None:
        self.metrics.pool_closed.labels(reason=reason).inc()

    def on_error(self, kind: str, code: int | None) -> None:
        self.metrics.errors.labels(kind=kind, code="" if code is None else str(code)).inc()

    def on_retry(self, kind: str, attempt: int, backoff: float) -> None:
        self.metrics.retries.labels(kind=kind).inc()

    def on_state(self, in_use: int, idle: int, waiting: int, maximum: int) -> None:
        self.metrics.pool_in_use.set(in_use)
        self.metrics.pool_idle.set(idle)
        self.metrics.pool_waiting.set(waiting)
        self.metrics.pool_max.set(maximum)
