"""chworkers: reliable, fast ingestion into ClickHouse."""

from __future__ import annotations

import logging

from chworkers.connection import Connection, ConnectionConfig, Host
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
    "Connection",
    "ConnectionConfig",
    "ConnectionLostError",
    "ConnectionPool",
    "EmbeddedClickHouse",  # the embedded ClickHouse endpoint (not an error)
    "EmbeddedError",
    "Host",
    "LeaseBroker",
    "LeaseClient",
    "LeaseStats",
    "MetricsHooks",
    "Notifier",
    "PoolClosedError",
    "PoolError",
    "PoolHooks",
    "PoolOptions",
    "PoolStats",
    "PoolTimeoutError",
    "QueueFullError",
    "RequestError",
    "ResponseTimeoutError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "ServerError",
    "SpoolCorruptError",
    "SpoolError",
    "SpoolFullError",
    "TaskError",
    "TransportError",
    "Watchdog",
    # Meta
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
