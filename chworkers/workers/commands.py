"""What other threads may ask of the supervisor's loop, as typed values.

The loop (:class:`~chworkers.workers.arbiter.Arbiter`) owns the supervisor's state; a
producer, a signal handler or the HTTP endpoint never changes it, they send one of these
commands through the loop's :class:`Mailbox` and the loop dispatches it by type (one
``match``). ``Command[R]`` says what the loop answers: :class:`Stats` answers a
:class:`SupervisorStats`, the others nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar, cast

from chworkers.clickhouse.lease import LeaseStats
from chworkers.errors import SupervisorStoppedError, WaitTimeoutError
from chworkers.workers.options import TableLimit

log = logging.getLogger(__name__)

R = TypeVar("R")


class Command(Generic[R]):
    """Base of the commands; ``R`` is the type of the loop's answer."""

    __slots__ = ()


@dataclass(frozen=True)
class Stop(Command[None]):
    """Stop accepting tasks; drain within ``timeout`` seconds (None: no limit) when
    ``graceful``, then stop the workers. A second graceful stop while draining stops at
    once."""

    graceful: bool = True
    timeout: float | None = None


@dataclass(frozen=True)
class Signal(Command[None]):
    """A signal the process received: SIGHUP reloads, SIGTERM/SIGINT stop."""

    signum: int


@dataclass(frozen=True)
class Reconfigure(Command[None]):
    """Change reloadable settings (and ``retry``) while running."""

    changes: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class SetTableLimits(Command[None]):
    """Replace the per-table insert limits (tables not named have none)."""

    limits: Mapping[str, TableLimit] = field(default_factory=dict)


@dataclass(frozen=True)
class RestartWorkers(Command["Future[int]"]):
    """Replace every worker, one at a time, each new one ready before the old one stops;
    answers a future of the number replaced, resolved when the rolling restart is done."""


@dataclass(frozen=True)
class Stats(Command["SupervisorStats"]):
    """A snapshot of the supervisor."""


@dataclass(frozen=True)
class RefreshGauges(Command[None]):
    """Set the gauges that describe the workers (read when ``/metrics`` is scraped)."""


@dataclass(frozen=True)
class SyncLogLevels(Command[None]):
    """Copy this process's log levels into the running workers."""


class WorkerSnapshot(TypedDict):
    """One worker in :attr:`SupervisorStats.workers`."""

    name: str
    pid: int | None
    state: str  # starting, idle, busy, stopping
    done: int
    in_flight: int
    max_tasks: int | None


class TableLimitSnapshot(TypedDict):
    """One table in :attr:`SupervisorStats.table_limits`."""

    max_concurrent_inserts: int | None
    max_inserts_per_second: float | None
    running: int  # inserts holding a slot now (on all shards)
    waiting: int  # inserts held back now (on all shards)
    peak: int  # most inserts running at once so far (into one shard)


@dataclass(frozen=True)
class SupervisorStats:
    """A snapshot of the supervisor (see :meth:`Supervisor.stats`)."""

    state: str
    workers: tuple[WorkerSnapshot, ...]
    queued: int
    queue_capacity: int
    in_flight: int
    outstanding: int
    tasks: Mapping[str, int]
    restarts: Mapping[str, int]
    pool: LeaseStats | None = None
    #: Workers aimed at: ``workers``, or the count autoscaling chose.
    target: int = 0
    #: Tables with insert limits, by table.
    table_limits: Mapping[str, TableLimitSnapshot] = field(default_factory=dict)


class Mailbox:
    """Commands on their way to the loop, from any thread; answers come back through
    futures. ``wake`` interrupts the loop's wait; ``finished`` is set when it ended."""

    def __init__(self, wake: Callable[[], None], finished: threading.Event) -> None:
        self._wake = wake
        self._finished = finished
        self._pending: deque[tuple[Command[Any], Future[Any] | None]] = deque()

    def tell(self, command: Command[Any]) -> None:
        """Queue a command; its answer or error is only logged."""
        self._pending.append((command, None))
        self._wake()

    def ask(self, command: Command[R], timeout: float | None) -> R:
        """Queue a command and wait for the loop's answer (``timeout=None``: no limit).

        Raises what the command raised, :class:`SupervisorStoppedError` when the loop
        ended without answering and :class:`WaitTimeoutError` when it did not answer in
        time."""
        future: Future[Any] = Future()
        self._pending.append((command, future))
        self._wake()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 0.1 if deadline is None else min(0.1, max(0.0, deadline - time.monotonic()))
            try:
                return cast(R, future.result(wait))
            except FutureTimeout:
                pass
            if self._finished.is_set() and not future.done():
                # The loop ended after the command was queued: nobody will answer it.
                raise SupervisorStoppedError("the supervisor stopped")
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"the supervisor's loop did not answer {command!r} within {timeout} s",
                    timeout=timeout,
                )

    def __bool__(self) -> bool:
        return bool(self._pending)

    def deliver(self, handle: Callable[[Command[Any]], object]) -> None:
        """On the loop: run ``handle`` on each queued command and answer its sender."""
        while self._pending:
            command, future = self._pending.popleft()
            try:
                result = handle(command)
            except BaseException as exc:
                if future is None:
                    log.exception("supervisor command %r failed", command)
                else:
                    future.set_exception(exc)
            else:
                if future is not None:
                    future.set_result(result)

    def refuse(self) -> None:
        """Once the loop ended: fail what is still queued, so no sender waits for ever."""
        while self._pending:
            _, future = self._pending.popleft()
            if future is not None:
                future.set_exception(SupervisorStoppedError("the supervisor stopped"))
