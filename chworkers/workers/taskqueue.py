"""The supervisor's one bounded task queue.

Producers (any thread of the supervisor's process) put encoded tasks; the supervisor's
loop takes them to dispatch to workers. The bound is both a count and a byte size, so
memory stays bounded however fast producers are: ``put`` blocks while the queue is full,
or raises :class:`QueueFullError` when its timeout runs out. Tasks a dead worker held
go back to the front, past the bound: they were admitted once already.

Inserts into a table held back by its limits (:mod:`chworkers.workers.tablelimits`) wait
apart, *parked* by table (and shard, of a sharded cluster: limits are per shard), so that
they never stand in front of other tables' tasks nor fill the queue the others share: a
table has up to ``maxsize`` tasks parked per shard, beyond which only its own producers
block. They still count as queued (``len``, draining).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from chworkers.errors import QueueFullError, SupervisorStoppedError
from chworkers.wording import plural
from chworkers.workers.tasks import Lane, Task


class TaskQueue:
    def __init__(self, maxsize: int, max_bytes: int | None, on_put: Callable[[], None]) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._items: deque[Task] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._on_put = on_put
        self._closed: str | None = None
        self.nbytes = 0
        self._parked: dict[Lane, deque[Task]] = {}
        self.parked = 0

    def __len__(self) -> int:
        return len(self._items) + self.parked

    def __repr__(self) -> str:
        return (
            f"<TaskQueue {len(self._items)}/{self.maxsize} tasks, {self.nbytes} bytes, "
            f"{self.parked} parked>"
        )

    def _full(self, task: Task) -> bool:
        if task.table is not None and self._parked:
            parked = self._parked.get(task.lane)
            if parked is not None and len(parked) >= self.maxsize:
                return True  # its table waits on its limit: only its producers wait
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
                        f"task queue full ({plural(len(self._items), 'task')}, "
                        f"{plural(self.nbytes, 'byte')}; limits {plural(self.maxsize, 'task')}"
                        + ("" if self.max_bytes is None else f", {plural(self.max_bytes, 'byte')}")
                        + f") for {timeout} s",
                        size=len(self._items),
                        nbytes=self.nbytes,
                        timeout=timeout,
                    )
                self._cond.wait(remaining)
            task.queued_at = time.monotonic()
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

    def oldest_wait(self, now: float) -> float:
        """How long the task at the front has waited (0: none queued); parked tasks
        wait on their table's limit, not on workers, and do not count."""
        with self._cond:
            return now - self._items[0].queued_at if self._items else 0.0

    def park(self, task: Task) -> None:
        """Hold back a task its table's limit does not let start yet (the loop only)."""
        assert task.table is not None
        with self._cond:
            parked = self._parked.setdefault(task.lane, deque())
            if parked and task.id < parked[0].id:
                parked.appendleft(task)  # taken out to start, then held back again
            else:
                parked.append(task)
            self.parked += 1

    def parked_lanes(self) -> list[Lane]:
        """The tables (on their shards) with tasks parked."""
        return list(self._parked)

    def unpark(self, lane: Lane, n: int) -> list[Task]:
        """Up to ``n`` of ``lane``'s parked tasks, oldest first (the loop only)."""
        with self._cond:
            parked = self._parked.get(lane)
            if not parked:
                return []
            taken = [parked.popleft() for _ in range(min(n, len(parked)))]
            if not parked:
                del self._parked[lane]
            self.parked -= len(taken)
            self._cond.notify_all()  # a producer of that table may be waiting
            return taken

    def parked_by_table(self) -> dict[str, int]:
        """Tasks parked per table, on all its shards."""
        counts: dict[str, int] = {}
        with self._cond:
            for (table, _), tasks in self._parked.items():
                counts[table] = counts.get(table, 0) + len(tasks)
        return counts

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
            for parked in self._parked.values():
                items.extend(parked)
            self._items.clear()
            self._parked.clear()
            self.parked = 0
            self.nbytes = 0
            self._cond.notify_all()
            return items
