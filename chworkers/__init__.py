"""chworkers: reliable, fast ingestion into ClickHouse."""

from __future__ import annotations

import logging

from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import (
    ChworkersError,
    ClickHouseError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    EmbeddedError,
    PoolClosedError,
    PoolError,
    PoolTimeoutError,
    QueueFullError,
    RequestError,
    ResponseTimeoutError,
    RetriesExhaustedError,
    ServerError,
    SpoolCorruptError,
    SpoolError,
    SpoolFullError,
    TaskError,
    TransportError,
)
from chworkers.connection import Connection, ConnectionConfig, Host
from chworkers.hooks import MetricsHooks, PoolHooks
from chworkers.lease import LeaseBroker, LeaseClient, LeaseStats
from chworkers.pool import ConnectionPool, PoolOptions, PoolStats
from chworkers.retry import RetryPolicy
from chworkers.systemd import Notifier, Watchdog

__version__ = "0.1.0"

__all__ = [
    # Errors
    "ChworkersError",
    "ClickHouseError",
    "ConfigError",
    "ConnectError",
    "ConnectionLostError",
    "EmbeddedClickHouse",  # the embedded ClickHouse endpoint (not an error)
    "EmbeddedError",
    "Notifier",
    "PoolClosedError",
    "PoolError",
    "PoolTimeoutError",
    "QueueFullError",
    "RequestError",
    "ResponseTimeoutError",
    "RetriesExhaustedError",
    "ServerError",
    "SpoolCorruptError",
    "SpoolError",
    "SpoolFullError",
    "TaskError",
    "TransportError",
    "Watchdog",
    # Connections, pool, retries, leases
    "Connection",
    "ConnectionConfig",
    "ConnectionPool",
    "Host",
    "LeaseBroker",
    "LeaseClient",
    "LeaseStats",
    "MetricsHooks",
    "PoolHooks",
    "PoolOptions",
    "PoolStats",
    "RetryPolicy",
    # Meta
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
