"""Middleware: what the worker loop and the supervisor do around tasks, kept out of them.

As in dramatiq, a middleware overrides some of the no-op hooks below. Worker-side hooks
run in the worker process (the middleware list is pickled with the worker's pre-fork
configuration, so instances must be picklable; closures are fine). Supervisor-side hooks
run on the supervisor's loop thread and must not block.

Metrics cross processes as deltas: a worker records into a :class:`MetricsRecorder`
(created in the worker after it starts) and ships what changed with its results; the
supervisor adds the deltas to its own registry. A dead worker therefore leaves nothing
behind to clean up, and counters never go backwards when workers are replaced.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chworkers.ops.metrics import Metrics
    from chworkers.workers.tasks import DeadLetter, Task
    from chworkers.workers.worker import TaskInfo, WorkerContext

log = logging.getLogger(__name__)

Labels = tuple[str, ...]
#: (counter increments, histogram observations, gauge values) by (instrument, labels).
MetricsDelta = tuple[
    dict[tuple[str, Labels], float],
    dict[tuple[str, Labels], list[float]],
    dict[str, float],
]


class Middleware:
    """Base class with no-op hooks; override the ones you need."""

    #: Whether the middleware is sent to the workers (it then has to be picklable).
    worker_side = True

    # Worker side (in the worker process).
    def after_worker_boot(self, worker: WorkerContext) -> None:
        """After the worker built its pool and metrics; raising fails the boot."""

    def before_worker_shutdown(self, worker: WorkerContext) -> None:
        """Before a worker exits normally."""

    def before_task(self, worker: WorkerContext, task: TaskInfo) -> None:
        """Before a task runs in the worker."""

    def after_task(
        self,
        worker: WorkerContext,
        task: TaskInfo,
        result: Any,
        error: BaseException | None,
        duration: float,
    ) -> None:
        """After a task ran in the worker, whatever its outcome."""

    # Supervisor side (on the supervisor's loop thread).
    def after_task_done(self, task: Task, error: BaseException | None, duration: float) -> None:
        """A task's future is about to resolve (``error`` is None on success)."""

    def after_dead_letter(self, letter: DeadLetter) -> None:
        """A task failed for good (non-retryable error, or it kept killing its worker)."""

    def after_worker_exit(self, name: str, pid: int | None, reason: str) -> None:
        """A worker process was reaped (reason: crashed, hung, recycled, stopped, boot)."""

    def after_supervisor_stop(self) -> None:
        """The supervisor's loop ended (every task is resolved); ``stop()`` returns after
        this, so finish what was handed over (e.g. write queued dead letters)."""


class MetricsRecorder:
    """Metric deltas recorded in a worker, shipped to the supervisor with its results."""

    __slots__ = ("counters", "gauges", "observations")

    #: Instruments a worker may record into (attribute names of :class:`Metrics`).
    COUNTERS = frozenset({"errors", "retries", "pool_created", "pool_closed"})
    HISTOGRAMS = frozenset({"pool_acquire_wait", "insert_duration"})
    GAUGES = frozenset({"pool_idle"})

    def __init__(self) -> None:
        self.counters: defaultdict[tuple[str, Labels], float] = defaultdict(float)
        self.observations: defaultdict[tuple[str, Labels], list[float]] = defaultdict(list)
        self.gauges: dict[str, float] = {}

    def inc(self, name: str, *labels: str, amount: float = 1.0) -> None:
        self.counters[name, labels] += amount

    def observe(self, name: str, value: float, *labels: str) -> None:
        self.observations[name, labels].append(value)

    def set(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def drain(self) -> MetricsDelta | None:
        if not (self.counters or self.observations or self.gauges):
            return None
        delta = (dict(self.counters), dict(self.observations), dict(self.gauges))
        self.counters.clear()
        self.observations.clear()
        self.gauges.clear()
        return delta


def apply_delta(metrics: Metrics, delta: MetricsDelta) -> dict[str, float]:
    """Add a worker's delta to the supervisor's instruments; returns its gauge values."""
    counters, observations, gauges = delta
    for (name, labels), amount in counters.items():
        if name not in MetricsRecorder.COUNTERS:
            log.warning("ignoring unknown metric %r from a worker", name)
            continue
        counter = getattr(metrics, name)
        (counter.labels(*labels) if labels else counter).inc(amount)
    for (name, labels), values in observations.items():
        if name not in MetricsRecorder.HISTOGRAMS:
            log.warning("ignoring unknown metric %r from a worker", name)
            continue
        histogram = getattr(metrics, name)
        child = histogram.labels(*labels) if labels else histogram
        for value in values:
            child.observe(value)
    return {k: v for k, v in gauges.items() if k in MetricsRecorder.GAUGES}


class DeadLetterCallback(Middleware):
    """Hands tasks that failed for good to ``callback`` (``Supervisor(dead_letter=...)``);
    :class:`chworkers.daemon.deadletter.DeadLetters` writes them to a directory instead.

    A callback that raises is logged and otherwise ignored: losing the hook must not take
    the supervisor down.
    """

    worker_side = False

    def __init__(self, callback: Callable[[DeadLetter], None]) -> None:
        self.callback = callback

    def after_dead_letter(self, letter: DeadLetter) -> None:
        try:
            self.callback(letter)
        except Exception:
            log.exception(
                "dead-letter hook failed for task %d (%s)", letter.task_id, letter.description
            )
