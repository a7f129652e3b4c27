"""chworkers: reliable, fast ingestion into ClickHouse.

The root is lazy (PEP 562): ``import chworkers`` loads nothing but this file (and
:mod:`chworkers.lazy`, which makes its ``__getattr__``), and each
public name is imported from the module defining it on first use, so a process that only
needs one layer (the daemon's command line, a worker's fork server) does not pay for all
of them. ``_EXPORTS`` below is the one declaration of the public surface; ``__all__`` and
``dir(chworkers)`` come from it, and the imports under ``TYPE_CHECKING`` say the same for
type checkers and IDEs (tests/test_api.py checks that the two agree).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from chworkers.lazy import lazy_attributes as _lazy_attributes

if TYPE_CHECKING:
    from chworkers._version import __version__ as __version__
    from chworkers.clickhouse.cluster import Cluster as Cluster
    from chworkers.clickhouse.cluster import Shard as Shard
    from chworkers.clickhouse.connection import (
        Connection as Connection,
    )
    from chworkers.clickhouse.connection import (
        ConnectionConfig as ConnectionConfig,
    )
    from chworkers.clickhouse.connection import (
        Host as Host,
    )
    from chworkers.clickhouse.hooks import (
        MetricsHooks as MetricsHooks,
    )
    from chworkers.clickhouse.hooks import (
        PoolHooks as PoolHooks,
    )
    from chworkers.clickhouse.inserts import (
        InsertResult as InsertResult,
    )
    from chworkers.clickhouse.inserts import (
        Rejected as Rejected,
    )
    from chworkers.clickhouse.lease import (
        LeaseBroker as LeaseBroker,
    )
    from chworkers.clickhouse.lease import (
        LeaseClient as LeaseClient,
    )
    from chworkers.clickhouse.lease import (
        LeaseStats as LeaseStats,
    )
    from chworkers.clickhouse.pool import (
        ConnectionPool as ConnectionPool,
    )
    from chworkers.clickhouse.pool import (
        PoolOptions as PoolOptions,
    )
    from chworkers.clickhouse.pool import (
        PoolStats as PoolStats,
    )
    from chworkers.clickhouse.retry import RetryPolicy as RetryPolicy
    from chworkers.clickhouse.sharding import BoundShardingKey as BoundShardingKey
    from chworkers.clickhouse.sharding import ShardingKey as ShardingKey
    from chworkers.clickhouse.sharding import ShardRouter as ShardRouter
    from chworkers.clickhouse.sharding import shard_indexes as shard_indexes
    from chworkers.clickhouse.shardleases import ShardLeaseBrokers as ShardLeaseBrokers
    from chworkers.daemon.deadletter import DeadLetters as DeadLetters
    from chworkers.embedded import EmbeddedClickHouse as EmbeddedClickHouse
    from chworkers.errors import (
        BatcherClosedError as BatcherClosedError,
    )
    from chworkers.errors import (
        BatchError as BatchError,
    )
    from chworkers.errors import (
        BenchError as BenchError,
    )
    from chworkers.errors import (
        BrokerError as BrokerError,
    )
    from chworkers.errors import (
        ChworkersError as ChworkersError,
    )
    from chworkers.errors import (
        ClickHouseError as ClickHouseError,
    )
    from chworkers.errors import (
        ColumnarFileError as ColumnarFileError,
    )
    from chworkers.errors import (
        ConfigError as ConfigError,
    )
    from chworkers.errors import (
        ConnectError as ConnectError,
    )
    from chworkers.errors import (
        ConnectionLostError as ConnectionLostError,
    )
    from chworkers.errors import (
        EmbeddedError as EmbeddedError,
    )
    from chworkers.errors import (
        HttpRequestError as HttpRequestError,
    )
    from chworkers.errors import (
        PoisonMessageError as PoisonMessageError,
    )
    from chworkers.errors import (
        PoolClosedError as PoolClosedError,
    )
    from chworkers.errors import (
        PoolError as PoolError,
    )
    from chworkers.errors import (
        PoolTimeoutError as PoolTimeoutError,
    )
    from chworkers.errors import (
        QueueFullError as QueueFullError,
    )
    from chworkers.errors import (
        RecordKeyError as RecordKeyError,
    )
    from chworkers.errors import (
        RequestError as RequestError,
    )
    from chworkers.errors import (
        ResponseTimeoutError as ResponseTimeoutError,
    )
    from chworkers.errors import (
        RetriesExhaustedError as RetriesExhaustedError,
    )
    from chworkers.errors import (
        SerializationError as SerializationError,
    )
    from chworkers.errors import (
        ServerError as ServerError,
    )
    from chworkers.errors import (
        ShardInsertError as ShardInsertError,
    )
    from chworkers.errors import (
        SpoolCorruptError as SpoolCorruptError,
    )
    from chworkers.errors import (
        SpoolError as SpoolError,
    )
    from chworkers.errors import (
        SpoolFullError as SpoolFullError,
    )
    from chworkers.errors import (
        SpoolTimeoutError as SpoolTimeoutError,
    )
    from chworkers.errors import (
        SpoolWriteError as SpoolWriteError,
    )
    from chworkers.errors import (
        StateDirInUseError as StateDirInUseError,
    )
    from chworkers.errors import (
        StatePathError as StatePathError,
    )
    from chworkers.errors import (
        SupervisorStoppedError as SupervisorStoppedError,
    )
    from chworkers.errors import (
        TaskError as TaskError,
    )
    from chworkers.errors import (
        TransportError as TransportError,
    )
    from chworkers.errors import (
        UnusablePathError as UnusablePathError,
    )
    from chworkers.errors import (
        WaitTimeoutError as WaitTimeoutError,
    )
    from chworkers.errors import (
        WorkerBootError as WorkerBootError,
    )
    from chworkers.errors import (
        WorkerLostError as WorkerLostError,
    )
    from chworkers.http.limits import HttpLimits as HttpLimits
    from chworkers.ops.metrics import Metrics as Metrics
    from chworkers.ops.systemd import (
        Notifier as Notifier,
    )
    from chworkers.ops.watchdog import (
        Watchdog as Watchdog,
    )
    from chworkers.workers.commands import SupervisorStats as SupervisorStats
    from chworkers.workers.context import (
        TaskInfo as TaskInfo,
    )
    from chworkers.workers.context import (
        WorkerContext as WorkerContext,
    )
    from chworkers.workers.deadletter import DeadLetter as DeadLetter
    from chworkers.workers.middleware import Middleware as Middleware
    from chworkers.workers.options import SupervisorOptions as SupervisorOptions
    from chworkers.workers.options import TableLimit as TableLimit
    from chworkers.workers.shardinsert import ShardedFuture as ShardedFuture
    from chworkers.workers.supervisor import Supervisor as Supervisor

#: Each public name -> the module that defines it, grouped by concept.
_EXPORTS: dict[str, str] = {
    # Talking to ClickHouse: connections, the pool, retries, inserts
    "Connection": "chworkers.clickhouse.connection",
    "ConnectionConfig": "chworkers.clickhouse.connection",
    "Host": "chworkers.clickhouse.connection",
    "ConnectionPool": "chworkers.clickhouse.pool",
    "PoolOptions": "chworkers.clickhouse.pool",
    "PoolStats": "chworkers.clickhouse.pool",
    "PoolHooks": "chworkers.clickhouse.hooks",
    "MetricsHooks": "chworkers.clickhouse.hooks",
    "RetryPolicy": "chworkers.clickhouse.retry",
    "InsertResult": "chworkers.clickhouse.inserts",
    "Rejected": "chworkers.clickhouse.inserts",
    # One connection budget across processes
    "LeaseBroker": "chworkers.clickhouse.lease",
    "LeaseClient": "chworkers.clickhouse.lease",
    "LeaseStats": "chworkers.clickhouse.lease",
    "ShardLeaseBrokers": "chworkers.clickhouse.shardleases",
    # Sharded clusters: shards of replicas, rows routed by key as Distributed does
    "Cluster": "chworkers.clickhouse.cluster",
    "Shard": "chworkers.clickhouse.cluster",
    "ShardingKey": "chworkers.clickhouse.sharding",
    "BoundShardingKey": "chworkers.clickhouse.sharding",
    "ShardRouter": "chworkers.clickhouse.sharding",
    "shard_indexes": "chworkers.clickhouse.sharding",
    # Worker processes
    "Supervisor": "chworkers.workers.supervisor",
    "SupervisorOptions": "chworkers.workers.options",
    "TableLimit": "chworkers.workers.options",
    "SupervisorStats": "chworkers.workers.commands",
    "Middleware": "chworkers.workers.middleware",
    "WorkerContext": "chworkers.workers.context",
    "TaskInfo": "chworkers.workers.context",
    "DeadLetter": "chworkers.workers.deadletter",
    "ShardedFuture": "chworkers.workers.shardinsert",
    # The daemon's dead-letter directory
    "DeadLetters": "chworkers.daemon.deadletter",
    # The embedded ClickHouse endpoint
    "EmbeddedClickHouse": "chworkers.embedded",
    # Operations: metrics, HTTP endpoint limits, systemd
    "Metrics": "chworkers.ops.metrics",
    "HttpLimits": "chworkers.http.limits",
    "Notifier": "chworkers.ops.systemd",
    "Watchdog": "chworkers.ops.watchdog",
    # Errors: one tree under ChworkersError
    "ChworkersError": "chworkers.errors",
    "ColumnarFileError": "chworkers.errors",
    "ConfigError": "chworkers.errors",
    "UnusablePathError": "chworkers.errors",
    "ClickHouseError": "chworkers.errors",
    "ServerError": "chworkers.errors",
    "TransportError": "chworkers.errors",
    "ConnectError": "chworkers.errors",
    "ResponseTimeoutError": "chworkers.errors",
    "ConnectionLostError": "chworkers.errors",
    "RequestError": "chworkers.errors",
    "PoolError": "chworkers.errors",
    "PoolTimeoutError": "chworkers.errors",
    "PoolClosedError": "chworkers.errors",
    "RetriesExhaustedError": "chworkers.errors",
    "BatchError": "chworkers.errors",
    "SerializationError": "chworkers.errors",
    "ShardInsertError": "chworkers.errors",
    "QueueFullError": "chworkers.errors",
    "WaitTimeoutError": "chworkers.errors",
    "TaskError": "chworkers.errors",
    "WorkerBootError": "chworkers.errors",
    "WorkerLostError": "chworkers.errors",
    "SupervisorStoppedError": "chworkers.errors",
    "SpoolError": "chworkers.errors",
    "SpoolFullError": "chworkers.errors",
    "SpoolCorruptError": "chworkers.errors",
    "SpoolWriteError": "chworkers.errors",
    "SpoolTimeoutError": "chworkers.errors",
    "BatcherClosedError": "chworkers.errors",
    "StateDirInUseError": "chworkers.errors",
    "StatePathError": "chworkers.errors",
    "HttpRequestError": "chworkers.errors",
    "BrokerError": "chworkers.errors",
    "PoisonMessageError": "chworkers.errors",
    "RecordKeyError": "chworkers.errors",
    "EmbeddedError": "chworkers.errors",
    "BenchError": "chworkers.errors",
    # Meta
    "__version__": "chworkers._version",
}

__all__ = list(_EXPORTS)


_getattr, __dir__ = _lazy_attributes(__name__, _EXPORTS)


if not TYPE_CHECKING:
    # Hidden from type checkers, which would otherwise type every unknown attribute of
    # the package as ``object`` instead of reporting it.
    __getattr__ = _getattr

logging.getLogger(__name__).addHandler(logging.NullHandler())
