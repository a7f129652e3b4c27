"""The supervisor's one bounded task queue.

Producers (any thread of the supervisor's process) put encoded tasks; the supervisor's
loop takes them to dispatch to workers. The bound is both a count and a byte size, so
memory stays bounded however fast producers are: ``put`` blocks while the queue is full,
or raises :class:`QueueFullError` when its timeout runs out. Tasks a dead worker held
go back to the front, past the bound: they were admitted once already.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from chworkers.errors import QueueFullError, SupervisorStoppedError
from chworkers.workers.tasks import Task


class TaskQueue:
    def __init__(self, maxsize: int, max_bytes: int | None, on_put: Callable[[], None]) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._items: deque[Task] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._on_put = on_put
        self._closed: str | None = None
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<TaskQueue {len(self._items)}/{self.maxsize} tasks, {self.nbytes} bytes>"

    def _full(self, task: Task) -> bool:
        if not self._items:
            return False  # a batch larger than max_bytes still gets through, alone
        if len(self._items) >= self.maxsize:
            return True
        return self.max_bytes is not None and self.nbytes + task.nbytes > self.max_bytes

    def put(self, task: Task, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed is not None:
                    raise SupervisorStoppedError(self._closed)
                if not self._full(task):
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise QueueFullError(
                        f"task queue full ({len(self._items)} tasks, {self.nbytes} bytes; "
                        f"limits {self.maxsize} tasks, {self.max_bytes} bytes) for {timeout} s",
                        size=len(self._items),
                        nbytes=self.nbytes,
                        timeout=timeout,
                    )
                self._cond.wait(remaining)
            self._items.append(task)
            self.nbytes += task.nbytes
        self._on_put()

    def requeue(self, tasks: Iterable[Task]) -> None:
        """Put tasks back at the front, in their original order."""
        with self._cond:
            for task in reversed(list(tasks)):
                self._items.appendleft(task)
                self.nbytes += task.nbytes

    def take(self) -> Task | None:
        """The next task, or None; only the supervisor's loop calls this."""
        with self._cond:
            if not self._items:
                return None
            task = self._items.popleft()
            self.nbytes -= task.nbytes
            self._cond.notify()
            return task

    def take_many(self, n: int) -> list[Task]:
        """Up to ``n`` tasks from the front; only the supervisor's loop calls this."""
        with self._cond:
            items = self._items
            taken = [items.popleft() for _ in range(min(n, len(items)))]
            self.nbytes -= sum(task.nbytes for task in taken)
            if taken:
                self._cond.notify(len(taken))
            return taken

    def close(self, reason: str) -> None:
        """Refuse new tasks from now on (queued ones stay)."""
        with self._cond:
            self._closed = reason
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def resize(self, maxsize: int) -> None:
        with self._cond:
            self.maxsize = maxsize
            self._cond.notify_all()

    def clear(self) -> list[Task]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self.nbytes = 0
            self._cond.notify_all()
            return items
