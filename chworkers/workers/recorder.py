"""Worker metrics as deltas: recorded in the worker, added up by the supervisor.

A worker records into a :class:`MetricsRecorder` (created in the worker after it starts)
and ships what changed with its results; the supervisor adds the deltas to its own
registry (:func:`apply_delta`). A dead worker therefore leaves nothing behind to clean
up, and counters never go backwards when workers are replaced.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chworkers.ops.metrics import Metrics

log = logging.getLogger(__name__)

Labels = tuple[str, ...]
#: (counter increments, histogram observations, gauge values) by (instrument, labels).
MetricsDelta = tuple[
    dict[tuple[str, Labels], float],
    dict[tuple[str, Labels], list[float]],
    dict[str, float],
]


class MetricsRecorder:
    """Metric deltas recorded in a worker, shipped to the supervisor with its results."""

    __slots__ = ("counters", "gauges", "observations")

    #: Instruments a worker may record into (attribute names of :class:`Metrics`).
    COUNTERS = frozenset({"errors", "retries", "pool_created", "pool_closed", "partition_splits"})
    HISTOGRAMS = frozenset({"pool_acquire_wait", "insert_duration"})
    GAUGES = frozenset({"pool_idle", "memory"})

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
