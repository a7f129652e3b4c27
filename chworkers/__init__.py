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
    BenchError,
    BrokerError,
    ChworkersError,
    ClickHouseError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    EmbeddedError,
    HttpRequestError,
    PoisonMessageError,
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
    WaitTimeoutError,
    WorkerBootError,
    WorkerLostError,
)
from chworkers.http.limits import HttpLimits
from chworkers.ops.metrics import Metrics
from chworkers.ops.systemd import Notifier, Watchdog
from chworkers.workers.commands import SupervisorStats
from chworkers.workers.context import TaskInfo, WorkerContext
from chworkers.workers.middleware import Middleware
from chworkers.workers.options import SupervisorOptions
from chworkers.workers.supervisor import Supervisor
from chworkers.workers.tasks import DeadLetter

__all__ = [  # noqa: RUF022 (grouped by concept, not sorted)
    # Talking to ClickHouse: connections, the pool, retries, inserts
    "Connection",
    "ConnectionConfig",
    "Host",
    "ConnectionPool",
    "PoolOptions",
    "PoolStats",
    "PoolHooks",
    "MetricsHooks",
    "RetryPolicy",
    "InsertResult",
    "Rejected",
    # One connection budget across processes
    "LeaseBroker",
    "LeaseClient",
    "LeaseStats",
    # Worker processes
    "Supervisor",
    "SupervisorOptions",
    "SupervisorStats",
    "Middleware",
    "WorkerContext",
    "TaskInfo",
    "DeadLetter",
    # The daemon's dead-letter directory
    "DeadLetters",
    # The embedded ClickHouse endpoint
    "EmbeddedClickHouse",
    # Operations: metrics, HTTP endpoint limits, systemd
    "Metrics",
    "HttpLimits",
    "Notifier",
    "Watchdog",
    # Errors: one tree under ChworkersError
    "ChworkersError",
    "ConfigError",
    "ClickHouseError",
    "ServerError",
    "TransportError",
    "ConnectError",
    "ResponseTimeoutError",
    "ConnectionLostError",
    "RequestError",
    "PoolError",
    "PoolTimeoutError",
    "PoolClosedError",
    "RetriesExhaustedError",
    "BatchError",
    "SerializationError",
    "QueueFullError",
    "WaitTimeoutError",
    "TaskError",
    "WorkerBootError",
    "WorkerLostError",
    "SupervisorStoppedError",
    "SpoolError",
    "SpoolFullError",
    "SpoolCorruptError",
    "SpoolWriteError",
    "SpoolTimeoutError",
    "BatcherClosedError",
    "StateDirInUseError",
    "HttpRequestError",
    "BrokerError",
    "PoisonMessageError",
    "EmbeddedError",
    "BenchError",
    # Meta
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
