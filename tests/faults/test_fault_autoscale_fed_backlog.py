"""Autoscaling follows a backlog fed a few tasks at a time, as the daemon feeds it.

Before, in a user trial of issue 16, `chworkers run` with `min_workers = 1`,
`max_workers = 4` and `scale_up_min_idle_cpu = 0` took 800,000 pushed rows in 1,000-row
batches: the spool grew to 533 batches while the count stayed at 1 for the whole burst.
The dispatcher keeps twice `max_workers` batches in the supervisor's queue and the rest
in the spool, so the queue always held 6 or 7 tasks, each for a fraction of a second;
the autoscaler only looked at how long the oldest queued task had waited (1 s), which
never came.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(90)

IN_FLIGHT = 4  # what the feeder keeps submitted, as the dispatcher's max_in_flight
TASKS = 120


def _work(n: int) -> int:
    time.sleep(0.04)  # an insert's time, as far as the workers go
    return n


def test_a_queue_never_empty_scales_up_though_each_task_waits_briefly(make_sup: Any) -> None:
    sup = make_sup(
        workers=1, max_workers=3, scale_up_after=0.5, scale_up_min_idle_cpu=0, prefetch=2
    )
    slots = threading.Semaphore(IN_FLIGHT)
    results: list[int] = []
    lock = threading.Lock()

    def done(future: Any) -> None:
        with lock:
            results.append(future.result())
        slots.release()

    for n in range(TASKS):
        slots.acquire()
        sup.call(_work, n).add_done_callback(done)
    deadline = time.monotonic() + 60
    while len(results) < TASKS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(results) == list(range(TASKS))
    # Each task waits about 0.1 s in the queue (two queued behind the two the worker
    # holds), never scale_up_after, yet the queue is never empty: the workers do not
    # keep up, and a worker is added.
    sample = sup.registry.get_sample_value
    assert sample("chworkers_worker_scaling_total", {"direction": "up"}) >= 1
