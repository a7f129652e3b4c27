"""Middleware: what the worker loop and the supervisor do around tasks, kept out of them.

As in dramatiq, a middleware overrides some of the no-op hooks below. Worker-side hooks
run in the worker process (the middleware list is pickled with the worker's pre-fork
configuration, so instances must be picklable; closures are fine). Supervisor-side hooks
run on the supervisor's loop thread and must not block.

Metrics cross processes as deltas (:mod:`chworkers.workers.recorder`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from chworkers.workers.context import TaskInfo, WorkerContext
from chworkers.workers.deadletter import DeadLetter

log = logging.getLogger(__name__)


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
        result: object,
        error: BaseException | None,
        duration: float,
    ) -> None:
        """After a task ran in the worker, whatever its outcome."""

    # Supervisor side (on the supervisor's loop thread).
    def after_task_done(self, task: TaskInfo, error: BaseException | None, duration: float) -> None:
        """A task's future is about to resolve (``error`` is None on success)."""

    def after_dead_letter(self, letter: DeadLetter) -> None:
        """A task failed for good (non-retryable error, or it kept killing its worker)."""

    def after_worker_exit(self, name: str, pid: int | None, reason: str) -> None:
        """A worker process was reaped (reason: crashed, hung, recycled, stopped, boot)."""

    def after_supervisor_stop(self) -> None:
        """The supervisor's loop ended (every task is resolved); ``stop()`` returns after
        this, so finish what was handed over (e.g. write queued dead letters)."""


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
