"""A worker's ClickHouse pool: the recipe built before the fork, the hooks that record it.

:class:`PoolConnector` is pickled to the worker with its spec and called there after the
start, so no live client crosses the fork; :class:`RecordingHooks` turn the pool's events
into the worker's metric deltas (and heartbeats: waiting for a lease is not hanging).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chworkers.clickhouse.hooks import PoolHooks
from chworkers.clickhouse.pool import ConnectionPool, PoolOptions
from chworkers.workers.context import Connections, WorkerContext

__all__ = ["PoolConnector", "RecordingHooks"]


class RecordingHooks(PoolHooks):
    """Pool events of a worker, recorded as metric deltas for the supervisor."""

    def __init__(self, worker: WorkerContext) -> None:
        self.metrics = worker.metrics
        self.worker = worker

    def on_acquire(self, wait_seconds: float) -> None:
        self.metrics.observe("pool_acquire_wait", wait_seconds)
        self.worker.beat()  # waiting for a lease is not hanging

    def on_timeout(self, wait_seconds: float) -> None:
        self.metrics.observe("pool_acquire_wait", wait_seconds)
        self.metrics.inc("errors", "pool", "")

    def on_connection_created(self, endpoint: str) -> None:
        self.metrics.inc("pool_created")

    def on_connection_closed(self, endpoint: str, reason: str) -> None:
        self.metrics.inc("pool_closed", reason)

    def on_error(self, kind: str, code: int | None) -> None:
        self.metrics.inc("errors", kind, "" if code is None else str(code))

    def on_retry(self, kind: str, attempt: int, backoff: float) -> None:
        self.metrics.inc("retries", kind)
        self.worker.beat()  # retrying is progress, not a hang

    def on_state(self, in_use: int, idle: int, waiting: int, maximum: int) -> None:
        self.metrics.set("pool_idle", idle)


@dataclass
class PoolConnector:
    """Pre-fork recipe for a worker's ClickHouse pool; called in the worker after start."""

    connection_options: Any
    pool_options: PoolOptions
    lease: Any  # LeaseClient

    def __call__(self, worker: WorkerContext) -> Connections:
        return ConnectionPool(
            self.connection_options,
            self.pool_options,
            lease=self.lease,
            hooks=RecordingHooks(worker),
        )
