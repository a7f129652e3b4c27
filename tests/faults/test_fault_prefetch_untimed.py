"""A burst of slow tasks queued while one worker is ready is not all sent to that worker.

Before: until a task had been timed, the dispatcher took tasks to last a millisecond, so
it sent a worker fifty ahead (``_PIPELINE`` / 1 ms), and its average of task times moved
5% towards each new one. A burst of 100 tasks of 80 ms queued while one worker was
ready went to it fifty at once; workers started next (autoscaling, a second worker still
booting) found half the work left (issue 11: one worker ran ~45 tasks, another 1), and
tasks in a worker's pipe are never taken back. Now a worker gets two until a task was
timed, and the average starts at the first time measured.
"""

from __future__ import annotations

import time

import waiting

from chworkers import Supervisor


def test_slow_tasks_wait_in_the_queue_not_in_the_first_workers_pipe() -> None:
    with Supervisor(workers=1, start_method="fork") as sup:
        futures = [sup.call(time.sleep, 0.05) for _ in range(40)]
        waiting.wait_for(lambda: sup.stats().in_flight > 0, timeout=30, what="a task sent")
        held = sup.stats().in_flight
        assert held <= 2, f"the only worker holds {held} tasks before any was timed"
        # Once timed, still no more than ~50 ms of work ahead.
        waiting.wait_for(lambda: sup.stats().workers[0]["done"] >= 3, timeout=30)
        assert sup.stats().in_flight <= 2
        sup.scale(2)
        waiting.wait_for(
            lambda: sum(w["state"] in ("idle", "busy") for w in sup.stats().workers) == 2,
            timeout=60,
            what="the second worker ready",
        )
        queued = sup.stats().queued
        for f in futures:
            f.result(60)
        done = sorted(w["done"] for w in sup.stats().workers)
    assert sum(done) == 40
    if queued >= 4:  # the second worker was ready while tasks were still queued: it ran some
        assert done[0] >= 2, (queued, done)
