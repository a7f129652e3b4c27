"""chworkers: reliable, fast ingestion into ClickHouse."""

from __future__ import annotations

import logging

from chworkers._version import __version__
from chworkers.clickhouse.connection import Connection, ConnectionConfig, Host
from chworkers.clickhouse.hooks import MetricsHooks, PoolHooks
from chworkers.clickhouse.inserts import InsertResult, Rejected
from chworkers.clickhouse.lease import LeaseBroker, LeaseClient, LeaseStats
from chworkers.clickhouse.pool import ConnectionPool, PoolOptions, PoolStats
from chworkers.clickhouse.retry import RetryPolicy
from chworkers.daemon.deadletter import DeadLetters
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import (
    BatcherClosedError,
    BatchError,
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
    SerializationError,
    ServerError,
    SpoolCorruptError,
    SpoolError,
    SpoolFullError,
    SpoolTimeoutError,
    SpoolWriteError,
    StateDirInUseError,
    SupervisorStoppedError,
    TaskError,
    TransportError,
    WorkerBootError,
    WorkerLostError,
)
from chworkers.ops.systemd import Notifier, Watchdog
from chworkers.workers.context import TaskInfo, WorkerContext
from chworkers.workers.control import SupervisorStats
from chworkers.workers.middleware import Middleware
from chworkers.workers.options import SupervisorOptions
from chworkers.workers.supervisor import Supervisor
from chworkers.workers.tasks import DeadLetter

__all__ = [
    # Errors
    "BatchError",
    "BatcherClosedError",
    "ChworkersError",
    "ClickHouseError",
    "ConfigError",
    "ConnectError",
    "Connection",
    "ConnectionConfig",
    "ConnectionLostError",
    "ConnectionPool",
    "DeadLetter",
    "DeadLetters",
    "EmbeddedClickHouse",  # the embedded ClickHouse endpoint (not an error)
    "EmbeddedError",
    "Host",
    "InsertResult",
    "LeaseBroker",
    "LeaseClient",
    "LeaseStats",
    "MetricsHooks",
    "Middleware",
    "Notifier",
    "PoolClosedError",
    "PoolError",
    "PoolHooks",
    "PoolOptions",
    "PoolStats",
    "PoolTimeoutError",
    "QueueFullError",
    "Rejected",
    "RequestError",
    "ResponseTimeoutError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "SerializationError",
    "ServerError",
    "SpoolCorruptError",
    "SpoolError",
    "SpoolFullError",
    "SpoolTimeoutError",
    "SpoolWriteError",
    "StateDirInUseError",
    "Supervisor",
    "SupervisorOptions",
    "SupervisorStats",
    "SupervisorStoppedError",
    "TaskError",
    "TaskInfo",
    "TransportError",
    "Watchdog",
    "WorkerBootError",
    "WorkerContext",
    "WorkerLostError",
    # Meta
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
