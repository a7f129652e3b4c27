"""Run the cases of a comparison interleaved, round by round, and summarize them.

A :class:`Group` is a set of :class:`Case` objects measured against each other (the
first is the baseline unless a case names another). Every round runs each case once, in
an order rotated from round to round, so that a slow spell of a shared machine falls on
all of them alike; the first round is a warm-up and is not counted. Python's garbage is
collected before each case, outside its measurement. A case measures
itself (its ``run`` returns one value per metric); its ``before`` and ``after`` (a fresh
table, a count check) run outside the measurement.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from chworkers.errors import BenchError, ChworkersError


@dataclass(frozen=True)
class Metric:
    """What a case reports: ``rows/s`` (higher is better), ``p50`` in us (lower)..."""

    name: str
    unit: str
    better: Literal["higher", "lower"] = "higher"


ROWS_PER_S = Metric("rate", "rows/s")
TASKS_PER_S = Metric("rate", "tasks/s")


@dataclass
class Case:
    """One path of a comparison: ``run`` does one round's work and returns its metrics."""

    name: str
    run: Callable[[], Mapping[str, float]]
    before: Callable[[], object] | None = None
    after: Callable[[], object] | None = None
    #: the case this one's ratio is against (default: the group's first case)
    versus: str | None = None
    #: the project's target for that ratio (issue 11), shown next to it: one for every
    #: metric, or by metric name
    target: float | Mapping[str, float] | None = None
    #: metrics only this case reports (e.g. the daemon's start-up time): no ratio
    extra: Sequence[Metric] = ()


@dataclass
class Group:
    """Cases measured against each other, with the metrics they all report."""

    title: str
    cases: Sequence[Case]
    metrics: Sequence[Metric] = (ROWS_PER_S,)
    note: str = ""


@dataclass
class Result:
    """One case's metric over the counted rounds, and its ratio to the case it faces."""

    group: str
    case: str
    metric: Metric
    values: list[float]
    versus: str | None = None
    #: this case's value / the versus case's value, round by round (paired)
    round_ratios: list[float] = field(default_factory=list)
    ratio: float | None = None  # median / the versus case's median
    target: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def meets_target(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        if self.metric.better == "higher":
            return self.ratio >= self.target
        return self.ratio <= self.target


def timed(amount: Callable[[], int]) -> Callable[[], Mapping[str, float]]:
    """A case's ``run`` from a function that does the work and returns how many rows
    (or tasks) it handled: the rate over the wall-clock time it took."""

    def run() -> Mapping[str, float]:
        start = time.perf_counter()
        done = amount()
        return {"rate": done / max(time.perf_counter() - start, 1e-9)}

    return run


Progress = Callable[[str], None]


def measure(group: Group, rounds: int, progress: Progress | None = None) -> list[Result]:
    """Run ``group``'s cases for one warm-up round and ``rounds`` counted ones,
    interleaved; returns one :class:`Result` per case and metric."""
    if rounds < 1:
        raise BenchError(f"rounds must be at least 1, not {rounds}")
    cases = list(group.cases)
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise BenchError(f"{group.title}: two cases share a name ({names})")
    for case in cases:
        if case.versus is not None and case.versus not in names:
            raise BenchError(f"{group.title}: {case.name} is compared to {case.versus}, not a case")
    samples: dict[str, list[Mapping[str, float]]] = {c.name: [] for c in cases}
    for number in range(rounds + 1):
        shift = number % len(cases)
        for case in cases[shift:] + cases[:shift]:
            if progress is not None:
                label = "warm-up" if number == 0 else f"round {number}/{rounds}"
                progress(f"{group.title} [{label}] {case.name}")
            value = _one(group, case)
            if number > 0:
                samples[case.name].append(value)
    return summarize(group, samples)


def _one(group: Group, case: Case) -> Mapping[str, float]:
    if case.before is not None:
        case.before()
    # The garbage of the cases before is collected now, not while this one is timed.
    gc.collect()
    try:
        value = case.run()
    except ChworkersError as exc:
        raise BenchError(f"{group.title}: {case.name} failed: {exc}") from exc
    if case.after is not None:
        case.after()
    missing = [m.name for m in (*group.metrics, *case.extra) if m.name not in value]
    if missing:
        raise BenchError(f"{group.title}: {case.name} reported no {', '.join(missing)}")
    return value


def summarize(group: Group, samples: Mapping[str, Sequence[Mapping[str, float]]]) -> list[Result]:
    """Results from each case's per-round metrics (rounds in the same order for all)."""
    baseline = group.cases[0].name
    results: list[Result] = []
    for case in group.cases:
        versus = case.versus or (baseline if case.name != baseline else None)
        for metric in group.metrics:
            values = [s[metric.name] for s in samples[case.name]]
            target = case.target
            if isinstance(target, Mapping):
                target = target.get(metric.name)
            result = Result(group.title, case.name, metric, values, versus, target=target)
            if versus is None:
                result.ratio = 1.0  # the baseline
            else:
                other = [s[metric.name] for s in samples[versus]]
                result.round_ratios = [a / b for a, b in zip(values, other, strict=True) if b]
                median_other = statistics.median(other)
                result.ratio = result.median / median_other if median_other else None
            results.append(result)
        for metric in case.extra:
            values = [s[metric.name] for s in samples[case.name]]
            results.append(Result(group.title, case.name, metric, values))
    return results
