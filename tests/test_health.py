"""chworkers.ops.health: levels, the aggregate report, components that lack problems() or
raise, and the stall check."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from chworkers.ops.health import Health, Level, Report, Stall
from chworkers.ops.metrics import Metrics


class Component:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def problems(self) -> list[str]:
        return list(self.reasons)


def test_the_level_is_the_worst_problem_and_failing_ones_come_first() -> None:
    metrics = Metrics(CollectorRegistry())
    health = Health(metrics)
    outage, broker = Component(), Component()
    health.add("inserts", outage)
    health.add("supervisor", broker, Level.FAILING)
    health.add("not yet", object())  # no problems(): skipped until it has one
    assert health.check() == Report(Level.OK)
    assert health.check().as_dict() == {"status": "ok", "problems": []}
    outage.reasons = ["no insert confirmed for 130 s while 4 batches wait"]
    report = health.check()
    assert report.level is Level.DEGRADED and report.alive
    assert (
        report.summary() == "degraded: inserts: no insert confirmed for 130 s while 4 batches wait"
    )
    broker.reasons = ["the lease broker is closed"]
    report = health.check()
    assert report.level is Level.FAILING and not report.alive
    assert [p.component for p in report.problems] == ["supervisor", "inserts"]
    assert report.as_dict()["status"] == "failing"
    assert metrics.health_level._value.get() == 2
    assert metrics.health_problems.labels(component="inserts")._value.get() == 1


def test_a_check_that_raises_is_a_failing_problem() -> None:
    def broken() -> list[str]:
        raise RuntimeError("oops")

    health = Health()
    health.add("dispatcher", broken)
    (problem,) = health.check().problems
    assert problem.level is Level.FAILING
    assert problem.reason == "its health check raised RuntimeError: oops"


def test_watch_logs_changes_of_level_and_components_not_of_numbers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = Health()
    c = Component()
    health.add("inserts", c)
    caplog.set_level(logging.INFO, "chworkers.ops.health")
    health.watch()
    for seconds in (120, 121, 122):
        c.reasons = [f"no insert confirmed for {seconds} s"]
        health.watch()
    c.reasons = []
    health.watch()
    assert [r.getMessage() for r in caplog.records] == [
        "health: degraded: inserts: no insert confirmed for 120 s",
        "health: ok again",
    ]


def test_stall_counts_from_the_last_progress_while_batches_wait() -> None:
    now = [1000.0]
    backlog = [0]
    stall = Stall(60.0, lambda: backlog[0], clock=lambda: now[0])
    now[0] += 3600
    assert stall.problems() == []  # idle: nothing waits, no stall however long
    backlog[0] = 5
    now[0] += 59
    assert stall.problems() == []
    now[0] += 2
    stall.failed(ConnectionError("refused"))
    assert stall.problems() == [
        "no insert confirmed for 61 s with 5 batches waiting; last error: ConnectionError: refused"
    ]
    stall.progressed()
    assert stall.problems() == []


def test_report_bodies_are_json_ready() -> None:
    import json

    health = Health()
    health.add("x", lambda: ["a", "b"])
    body: dict[str, Any] = health.check().as_dict()
    assert json.loads(json.dumps(body)) == {
        "status": "degraded",
        "problems": [
            {"component": "x", "level": "degraded", "reason": "a"},
            {"component": "x", "level": "degraded", "reason": "b"},
        ],
    }
