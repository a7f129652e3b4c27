"""What a running worker is, as middleware and connectors see it.

:class:`WorkerContext` and :class:`TaskInfo` are the types the worker process hands to
middleware hooks; :data:`Connector` builds a worker's connections after it started. They
live here, apart from the worker loop (:mod:`chworkers.workers.worker`) and the
middleware base class (:mod:`chworkers.workers.middleware`), so that both can import
them without importing each other.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from chworkers.workers.recorder import MetricsRecorder

# Heartbeat slots in the worker's shared array.
BEAT, STATE, CURRENT, STARTED = range(4)
HEARTBEAT_SLOTS = 4
STARTING, IDLE, BUSY, STOPPING = 0.0, 1.0, 2.0, 3.0


class Heartbeat(Protocol):
    """The worker's heartbeat slots in shared memory (a ``RawArray`` of doubles)."""

    def __getitem__(self, slot: int, /) -> float: ...

    def __setitem__(self, slot: int, value: float, /) -> None: ...


class Connections(Protocol):
    """What a worker runs connection-bound tasks through (the ClickHouse pool)."""

    def with_connection(
        self, fn: Callable[[Any], Any], *, retry: Any = None, shard: int | None = None
    ) -> Any: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class TaskInfo:
    """What middleware sees of a task: in the worker (``before_task``, ``after_task``)
    and in the supervisor (``after_task_done``)."""

    id: int
    kind: str
    table: str | None = None
    rows: int = 0
    #: The shard it runs on, of a sharded cluster (None: not sharded).
    shard: int | None = None


class WorkerContext:
    """The running worker, as middleware and connectors see it: its ``name`` and
    ``pid``, the ``settings`` the supervisor may change (``retry``), its ``metrics``
    recorder and, once connected, its ``connections``."""

    def __init__(self, name: str, settings: Mapping[str, object], heartbeat: Heartbeat) -> None:
        self.name = name
        self.pid = os.getpid()
        self.settings: dict[str, Any] = dict(settings)
        self.metrics = MetricsRecorder()
        self.connections: Connections | None = None
        self._heartbeat = heartbeat

    def beat(self) -> None:
        """Mark progress; long tasks may call it to show they are not hung."""
        self._heartbeat[BEAT] = time.monotonic()


#: Builds the worker's connections after it started: ``connect(worker) -> Connections``.
Connector = Callable[[WorkerContext], Connections]
