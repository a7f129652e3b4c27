"""A supervisor's way to a stop: running, then draining, then stopping.

:class:`Shutdown` holds the stop mode (None while running, ``draining`` while queued
and running tasks finish within the graceful timeout, ``stopping`` once the workers are
told to exit) and moves it on. It belongs to the
:class:`~chworkers.workers.arbiter.Arbiter`, which publishes the mode and calls these
methods from its loop thread only.
"""

from __future__ import annotations

import logging
import math
import time

from chworkers.errors import SupervisorStoppedError
from chworkers.workers.crew import Crew
from chworkers.workers.outcomes import Outcomes
from chworkers.workers.taskqueue import TaskQueue

log = logging.getLogger(__name__)


class Shutdown:
    def __init__(self, queue: TaskQueue, outcomes: Outcomes) -> None:
        self.queue = queue
        self.outcomes = outcomes
        #: None while running normally, then draining, then stopping.
        self.mode: str | None = None
        self._drain_deadline = 0.0

    def begin(self, crew: Crew | None, graceful: bool, timeout: float | None) -> None:
        """Accept no new tasks; drain first (``graceful``, within ``timeout``: None for
        no limit) or stop the workers now. Asked again while draining, it stops now."""
        self.queue.close("the supervisor is stopping and accepts no new tasks")
        if graceful and self.mode is None:
            self.mode = "draining"
            self._drain_deadline = time.monotonic() + (math.inf if timeout is None else timeout)
            in_flight = crew.in_flight() if crew else 0
            log.info("draining: %d queued, %d running", len(self.queue), in_flight)
            if crew is not None:
                # No fresh workers for a supervisor about to stop (those started already
                # help drain); a worker that dies meanwhile is still replaced.
                crew.rollout.abandon("the supervisor is stopping")
            return
        self.stop_workers(crew, fast=not graceful or self.mode == "draining")

    def stop_workers(self, crew: Crew | None, fast: bool) -> None:
        """Fail what is still queued and tell the workers to exit (``fast``: kill them)."""
        self.mode = "stopping"
        for task in self.queue.clear():
            self.outcomes.fail(
                task,
                SupervisorStoppedError(f"{task.description} was not run: the supervisor stopped"),
            )
        if crew is not None:
            crew.stop(fast)

    def progress(self, crew: Crew | None, now: float) -> None:
        """While draining: stop once nothing is queued or running, or at the deadline."""
        if self.mode != "draining" or crew is None:
            return
        in_flight = crew.in_flight()
        if not len(self.queue) and not in_flight:
            self.stop_workers(crew, fast=False)
        elif now >= self._drain_deadline:
            log.warning(
                "graceful timeout: %d queued and %d running %s left; terminating",
                len(self.queue),
                in_flight,
                "task" if len(self.queue) + in_flight == 1 else "tasks",
            )
            self.stop_workers(crew, fast=True)

    def fail_all(self, crew: Crew | None, error: BaseException) -> None:
        """Fail every task, queued or held by a worker, with ``error``."""
        for task in self.queue.clear():
            self.outcomes.fail(task, error)
        if crew is not None:
            crew.fail_held(error)
