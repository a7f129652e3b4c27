"""What other threads may ask of the supervisor's loop, as typed values.

The loop (:class:`~chworkers.workers.arbiter.Arbiter`) owns the supervisor's state; a
producer, a signal handler or the HTTP endpoint never changes it, they send one of these
commands and the loop dispatches it by type (one ``match``). ``Command[R]`` says what
the loop answers: :class:`Stats` answers a :class:`SupervisorStats`, the others nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypedDict, TypeVar

from chworkers.clickhouse.lease import LeaseStats

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
