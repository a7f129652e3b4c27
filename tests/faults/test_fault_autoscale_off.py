"""Turning autoscaling off at runtime (a reload dropping max_workers) left the worker
count where autoscaling had taken it, not at ``workers``: the count was only reset when
``workers`` itself changed."""

from __future__ import annotations

import time

import pytest
import waiting

from chworkers import Supervisor

pytestmark = pytest.mark.timeout(60)


def serving(sup: Supervisor) -> int:
    return sum(1 for w in sup.stats().workers if w["state"] != "stopping")


def test_turning_autoscaling_off_goes_back_to_workers() -> None:
    sup = Supervisor(
        workers=1, max_workers=3, scale_up_after=0.1, scale_up_min_idle_cpu=0, start_method="fork"
    )
    with sup:
        scale_up_then_off(sup)


def scale_up_then_off(sup: Supervisor) -> None:
    futures = [sup.call(time.sleep, 0.05) for _ in range(60)]
    waiting.wait_for(lambda: sup.stats().target >= 2, timeout=20, what="autoscaled up")
    # A reload that drops max_workers, workers still 1: the autoscaled count goes too.
    sup.reconfigure(max_workers=None)
    assert sup.stats().target == 1
    assert all(f.result(30) is None for f in futures)
    waiting.wait_for(lambda: serving(sup) == 1, timeout=20, what="back to one worker")
