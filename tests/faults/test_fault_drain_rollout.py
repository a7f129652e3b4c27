"""A rolling restart under way when a graceful stop begins ends there: no fresh worker
is started while the supervisor drains to stop (one was, for every old worker left,
each retiring an old one that was draining the queue anyway)."""

from __future__ import annotations

import time

import pytest
from waiting import wait_for

from chworkers import Supervisor
from chworkers.workers.middleware import Middleware

pytestmark = pytest.mark.timeout(60)


class Exits(Middleware):
    worker_side = False

    def __init__(self) -> None:
        self.names: list[str] = []

    def after_worker_exit(self, name: str, pid: int | None, reason: str) -> None:
        self.names.append(name)


def nap(seconds: float) -> None:
    time.sleep(seconds)


def test_no_fresh_worker_once_draining_began() -> None:
    exits = Exits()
    sup = Supervisor(workers=2, start_method="fork", middleware=[exits], prefetch=1).start()
    try:
        futures = [sup.call(nap, 0.3) for _ in range(12)]
        sup.restart_workers(wait=False)

        def names() -> set[str]:
            return {w["name"] for w in sup.stats().workers}

        wait_for(lambda: "worker-3" in names(), timeout=30, what="the rollout's first worker")
        sup.stop(graceful=True)
    finally:
        sup.stop(graceful=False)
    assert all(f.exception() is None for f in futures)  # the queue was drained
    assert sorted(exits.names) == ["worker-1", "worker-2", "worker-3"]
