"""A worker's ClickHouse pool: its options from the supervisor's (the connection budget,
the retry policy), the recipe built before the fork, the hooks that record it.

:func:`worker_pool_options` gives every worker's pool its share of the budget;
:func:`check_hung_timeout` warns when one request may outlast ``hung_timeout``.
:class:`PoolConnector` is pickled to the worker with its spec and called there after the
start, so no live client crosses the fork; :class:`RecordingHooks` turn the pool's events
into the worker's metric deltas (and heartbeats: waiting for a lease is not hanging).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chworkers.clickhouse.dsn import ConnectionConfig
from chworkers.clickhouse.hooks import PoolHooks
from chworkers.clickhouse.pooloptions import PoolOptions
from chworkers.clickhouse.retry import RetryPolicy
from chworkers.errors import ConfigError
from chworkers.workers.context import Connections, WorkerContext
from chworkers.workers.options import SupervisorOptions

__all__ = ["PoolConnector", "RecordingHooks", "check_hung_timeout", "worker_pool_options"]

#: The supervisor's logger, where the warning was logged before it moved here.
log = logging.getLogger("chworkers.workers.options")


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
        # Here, in the worker: the supervisor's process (the daemon's) never opens a
        # connection, nor imports clickhouse-connect for one.
        from chworkers.clickhouse.pool import ConnectionPool

        return ConnectionPool(
            self.connection_options,
            self.pool_options,
            lease=self.lease,
            hooks=RecordingHooks(worker),
        )


def worker_pool_options(
    given: PoolOptions | Mapping[str, object] | None,
    retry: RetryPolicy | Mapping[str, object] | None,
    connections: int,
) -> PoolOptions:
    """Each worker's pool: the supervisor's connection budget, the retry policy.

    Worker pools open connections only when a task needs one, under a lease: a pool
    minimum would open connections (a request each) at boot without one, and all
    workers together must stay within ``max_connections`` requests in flight.
    """
    options = PoolOptions.coerce(given)
    if isinstance(given, Mapping):
        for key, why in (
            ("max_connections", "is the supervisor's budget: give Supervisor(max_connections=N)"),
            ("min_connections", "must be 0: workers open connections under a lease, on demand"),
        ):
            if given.get(key):
                raise ConfigError(
                    f"pool_options: {key} {why}",
                    key=f"pool_options.{key}",
                    value=given[key],
                    expected="not set",
                )
    policy = RetryPolicy.coerce(retry) if retry is not None else options.retry
    return dataclasses.replace(
        options, max_connections=connections, min_connections=0, retry=policy
    )


def check_hung_timeout(config: ConnectionConfig, options: SupervisorOptions) -> None:
    """Warn when one legitimate request may outlast ``hung_timeout``: the worker would
    be killed as hung in the middle of a slow but healthy insert."""
    longest = config.connect_timeout + config.send_receive_timeout
    if options.hung_timeout <= longest:
        log.warning(
            "hung_timeout (%g s) is not above connect_timeout + send_receive_timeout "
            "(%g s): a worker waiting on one slow request would be killed as hung; raise "
            "hung_timeout or lower send_receive_timeout",
            options.hung_timeout,
            longest,
        )
