"""Health: one aggregator over the components' ``problems()``, three levels, one report.

Each component that can go wrong says so with ``problems() -> list[str]``: human-readable
reasons, empty while it is fine. :class:`Health` asks every registered component and
turns the answers into a :class:`Report` whose level is the worst of them:

``ok``
    Nothing to report.
``degraded``
    Data is safe (spooled on disk) but not flowing as it should, for a reason outside
    the daemon or one it is recovering from by itself: ClickHouse unreachable, no insert
    confirmed for a while, a table not created yet, the embedded ClickHouse restarting,
    inserts failing for good. Restarting the daemon would not help, so ``/healthz``
    still answers 200 (with the reasons) and the systemd watchdog keeps being pinged;
    ``STATUS=`` and the ``chworkers_health_level`` gauge say it, and an alert fires if
    it lasts.
``failing``
    The daemon itself is wedged in a way a restart fixes: its main loop or the
    supervisor's stopped turning, the lease broker or the dispatcher thread died or
    hangs, a source thread died. ``/healthz`` and ``/readyz`` answer 503 and the
    watchdog pings stop, so systemd restarts the daemon.

The level is chosen where a component is registered (a component does not know how bad
its problems are for the whole), so components only ever return strings. A component
without a ``problems`` method is skipped, and a check that raises is itself a failing
problem: a health check must not hide behind its own bug.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from chworkers.ops.metrics import Metrics
from chworkers.wording import plural

__all__ = ["Health", "Level", "Problem", "Report", "Stall"]

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """A component that tells its problems: each reason is one line."""

    def problems(self) -> Iterable[str]: ...


#: What can be registered: an object with ``problems()``, or the function itself.
Component = Reporter | Callable[[], Iterable[str]]


class Level(enum.IntEnum):
    OK = 0
    DEGRADED = 1
    FAILING = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Problem:
    component: str
    level: Level
    reason: str

    def __str__(self) -> str:
        return f"{self.component}: {self.reason}"

    def as_dict(self) -> dict[str, str]:
        return {"component": self.component, "level": self.level.label, "reason": self.reason}


@dataclass(frozen=True)
class Report:
    """The health at one moment: the worst level and every problem behind it."""

    level: Level
    problems: tuple[Problem, ...] = ()

    @property
    def alive(self) -> bool:
        """Whether the process should be left running (``/healthz`` 200, watchdog pings)."""
        return self.level < Level.FAILING

    def as_dict(self) -> dict[str, str | list[dict[str, str]]]:
        """The JSON body of ``/healthz``."""
        return {"status": self.level.label, "problems": [p.as_dict() for p in self.problems]}

    def summary(self) -> str:
        """One line: ``ok``, or ``degraded: component: reason; ...``."""
        if not self.problems:
            return self.level.label
        return f"{self.level.label}: " + "; ".join(map(str, self.problems))


class Health:
    """Asks registered components for their problems; the one answer to "is it healthy"."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._components: list[tuple[str, Component, Level]] = []
        self._last: Report | None = None

    def add(self, name: str, component: Component, level: Level = Level.DEGRADED) -> None:
        """Register ``component`` (an object with ``problems()``, or a function returning
        reasons); its problems count at ``level``."""
        with self._lock:
            self._components = [c for c in self._components if c[0] != name]
            self._components.append((name, component, level))
        if self._metrics is not None:
            self._metrics.health_problems.labels(component=name).set(0)

    def check(self) -> Report:
        """Ask every component now (cheap: components answer from memory)."""
        with self._lock:
            components = list(self._components)
        problems: list[Problem] = []
        counts: dict[str, int] = {}
        for name, component, level in components:
            probe = getattr(component, "problems", None)
            if probe is None and callable(component):
                probe = component  # a function returning reasons
            if probe is None:
                continue  # a component that does not report problems (yet)
            try:
                reasons = [str(r) for r in probe()]
            except Exception as exc:
                log.debug("health check of %s raised", name, exc_info=True)
                reasons, level = (
                    [f"its health check raised {type(exc).__name__}: {exc}"],
                    Level.FAILING,
                )
            counts[name] = len(reasons)
            problems.extend(Problem(name, level, reason) for reason in reasons)
        problems.sort(key=lambda p: -p.level)
        report = Report(max((p.level for p in problems), default=Level.OK), tuple(problems))
        if self._metrics is not None:
            self._metrics.health_level.set(int(report.level))
            for name, count in counts.items():
                self._metrics.health_problems.labels(component=name).set(count)
        return report

    def watch(self) -> Report:
        """:meth:`check`, logging when the level or the reasons change (call it often)."""
        report = self.check()
        with self._lock:
            last, self._last = self._last, report
        # Reasons carry durations ("for 125 s") that change every second: log when the
        # level or the set of troubled components changes, not on every new number.
        if last is None or _key(last) != _key(report):
            if report.level is Level.OK:
                if last is not None and last.level is not Level.OK:
                    log.info("health: ok again")
            else:
                logger = log.error if report.level is Level.FAILING else log.warning
                logger("health: %s", report.summary())
        return report


def _key(report: Report) -> tuple[Level, frozenset[tuple[str, Level]]]:
    return report.level, frozenset((p.component, p.level) for p in report.problems)


class Stall:
    """ "No insert confirmed for ``after`` seconds while batches wait", as a component.

    The daemon calls :meth:`progressed` for every confirmed batch and :meth:`failed` for
    every failed attempt; ``backlog()`` counts the batches waiting. The clock restarts
    whenever nothing waits, so a backlog that just appeared after a quiet hour is not a
    stall.
    """

    def __init__(
        self,
        after: float,
        backlog: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.after = after
        self._backlog = backlog
        self._clock = clock
        self._lock = threading.Lock()
        self._last = clock()
        self._error: str | None = None

    def progressed(self) -> None:
        with self._lock:
            self._last = self._clock()
            self._error = None

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self._error = f"{type(error).__name__}: {error}"

    def problems(self) -> list[str]:
        waiting = self._backlog()
        now = self._clock()
        with self._lock:
            if waiting == 0:
                self._last = now
                return []
            idle, error = now - self._last, self._error
        if idle < self.after:
            return []
        reason = f"no insert confirmed for {idle:.0f} s with {plural(waiting, 'batch')} waiting"
        return [reason + (f"; last error: {error}" if error else "")]
