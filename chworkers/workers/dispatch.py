"""Handing queued tasks to workers: the least busy first, a little work ahead of each.

:class:`Dispatcher` takes tasks off the :class:`~chworkers.workers.taskqueue.TaskQueue`
and sends them to ready workers, each given up to its credit: a few tasks ahead
(``prefetch``, sized down to ~50 ms of work by the measured task time, and at most
``prefetch_bytes``), so a worker finishing a task finds the next one in its pipe. Until
a first task has been timed, a worker gets two: a burst of slow tasks queued while the
first worker is the only one ready is not all sent to it, to run one after the other
while the workers that start next find nothing left (tasks in a worker's pipe are
never taken back). Tasks whose table is at its insert limit are parked until it lets
them start. It belongs to the :class:`~chworkers.workers.crew.Crew` and runs on the
supervisor's loop thread.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from chworkers.workers import channel
from chworkers.workers.options import SupervisorOptions
from chworkers.workers.outcomes import Outcomes
from chworkers.workers.processes import Processes, WorkerHandle
from chworkers.workers.tablelimits import TableLimits
from chworkers.workers.taskqueue import TaskQueue
from chworkers.workers.tasks import Task

_PIPELINE = 0.05  # s of work a worker is sent ahead
_UNTIMED = 2  # tasks a worker is sent ahead before any task was timed
_WEIGHT = 0.05  # of a new duration in the moving average of task time


class Dispatcher:
    """``options()`` returns the settings in force."""

    def __init__(
        self,
        options: Callable[[], SupervisorOptions],
        procs: Processes,
        queue: TaskQueue,
        outcomes: Outcomes,
        limits: TableLimits,
    ) -> None:
        self.options = options
        self.procs = procs
        self.queue = queue
        self.outcomes = outcomes
        self.limits = limits
        #: Moving average of the time tasks run (None: none ran yet); sizes prefetch.
        self.task_time: float | None = None

    def observe(self, duration: float) -> None:
        """A task ran for ``duration`` seconds."""
        if self.task_time is None:
            self.task_time = duration
        else:
            self.task_time += (duration - self.task_time) * _WEIGHT

    def ahead(self) -> int:
        """How many tasks one worker may hold now: ~50 ms of work, at most ``prefetch``,
        at least two (the one it runs and the next)."""
        if self.task_time is None:
            return _UNTIMED
        return max(2, min(self.options().prefetch, int(_PIPELINE / max(self.task_time, 1e-6))))

    def _credit(self, h: WorkerHandle, limit: int) -> bool:
        n = len(h.assigned)
        if n >= limit or (n and h.assigned_bytes >= self.options().prefetch_bytes):
            return False
        return h.max_tasks is None or h.dispatched < h.max_tasks

    def dispatch(self, workers: Iterable[WorkerHandle]) -> None:
        queue = self.queue
        if not len(queue):
            return
        ready = [h for h in workers if h.accepts_tasks()]
        limit = self.ahead()
        batches: dict[WorkerHandle, list[Task]] = {}
        pending: deque[Task] = deque()
        limits = self.limits
        now = time.monotonic()
        if limits and queue.parked:
            # Held back by their table's limit: the oldest go first once it lets them.
            for lane in queue.parked_lanes():
                pending.extend(queue.unpark(lane, limits.room(lane, now)))
        while ready:
            # The least busy; between equals, the one given least so far: a trickle of
            # tasks that each find every worker idle is spread, not all sent to the first.
            best = min(ready, key=lambda h: (len(h.assigned), h.dispatched))
            if not self._credit(best, limit):
                ready.remove(best)
                continue
            if not pending:
                # Take what the free credit can absorb in one go (one lock, not one per task).
                room = sum(max(1, limit - len(h.assigned)) for h in ready)
                pending.extend(queue.take_many(room))
                if not pending:
                    break
            task = pending.popleft()
            if limits and not self._admit(task, best, now):
                continue  # parked until its table's limit lets it start
            if not self.outcomes.start(task):
                limits.release(task, now)
                continue  # cancelled while queued
            best.assigned[task.id] = task
            best.assigned_bytes += task.nbytes
            best.dispatched += 1
            if best.max_tasks is not None and best.dispatched >= best.max_tasks:
                best.leaving = "recycled"  # its replacement starts now
            batches.setdefault(best, []).append(task)
        if pending:
            queue.requeue(pending)
        for h, batch in batches.items():
            for part in _messages(batch):
                self.procs.send(h, channel.TASKS, [t.wire() for t in part])

    def _admit(self, task: Task, best: WorkerHandle, now: float) -> bool:
        """Whether ``task`` may start now on ``best`` (the least busy worker) as its
        table's limits go; if not, it waits parked."""
        if self.limits.admit(task, now, idle=not best.assigned):
            return True
        self.queue.park(task)
        return False


def _messages(batch: list[Task]) -> Iterator[list[Task]]:
    """``batch`` cut into messages of at most a pipe-full of bytes (or one task): a worker
    starts its first task once that task's message is read, not once the whole batch is."""
    part: list[Task] = []
    size = 0
    for task in batch:
        piped = task.piped_bytes()
        if part and size + piped > channel.PIPE_SIZE:
            yield part
            part, size = [], 0
        part.append(task)
        size += piped
    if part:
        yield part
