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
    ResponseTimeoutError,
    RetriesExhaustedError,
    ServerError,
    SpoolCorruptError,
    SpoolError,
    SpoolFullError,
    TaskError,
    TransportError,
)
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
    "ResponseTimeoutError",
    "RetriesExhaustedError",
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
