"""No scaling up past the connection budget while the worker added last boots.

With ``max_connections = 1`` a second worker already waits for the one connection, so
the autoscaler must stop at two. It knew workers waited only from looks that saw a
lease waiter; a second worker that took longer than ``scale_up_after`` to boot (a busy
machine) had never asked for a connection when it turned ready, so the first look after
that saw nobody waiting and added a third (CI run of the full suite, 3 worker pids).
The decisions are driven here on the autoscaler itself, with the supervisor's own
queue, metrics and worker handles, at chosen instants.
"""

from __future__ import annotations

import time
from concurrent.futures import Future

from prometheus_client import CollectorRegistry

from chworkers.ops.metrics import Metrics
from chworkers.workers.autoscale import Autoscaler
from chworkers.workers.options import SupervisorOptions
from chworkers.workers.processes import WorkerHandle
from chworkers.workers.taskqueue import TaskQueue
from chworkers.workers.tasks import Task


class _Process:
    def __init__(self, pid: int) -> None:
        self.pid = pid


class _Crew:
    """The crew as the autoscaler sees it: handles and a target it can change."""

    def __init__(self) -> None:
        self.handles: dict[str, WorkerHandle] = {}
        self.target = 0

    @property
    def workers(self) -> dict[str, WorkerHandle]:
        return self.handles

    def scale(self, n: int) -> None:
        while len(self.handles) < n:
            name = f"worker-{len(self.handles) + 1}"
            process = _Process(1000 + len(self.handles))
            self.handles[name] = WorkerHandle(name, process, None, None, None, None)  # type: ignore[arg-type]
        self.target = n


def test_a_worker_just_ready_does_not_count_as_not_waiting() -> None:
    options = SupervisorOptions(
        workers=1, max_workers=3, max_connections=1, scale_up_after=0.2, scale_up_min_idle_cpu=0
    )
    crew = _Crew()
    crew.scale(1)
    crew.handles["worker-1"].state = "ready"
    queue = TaskQueue(100, None, lambda: None)
    for i in range(20):
        queue.put(Task(i, "call", b"", [], Future(), 0))
    waiters = {"n": 0}
    scaler = Autoscaler(crew, queue, Metrics(CollectorRegistry()), lambda: waiters["n"])

    start = time.monotonic()  # the queue stamps its tasks with the monotonic clock

    def look(at: float) -> None:
        scaler.next_look = 0.0
        scaler.look(start + at, options)

    look(1.0)  # backlog, nobody waits for the connection: a second worker
    assert crew.target == 2
    t = 1.0
    for _ in range(8):  # it boots for 2 s, worker-1 alone holding the connection
        t += 0.25
        look(t)
    crew.handles["worker-2"].state = "ready"
    look(t + 0.25)  # ready, its first task's lease not asked for yet
    assert crew.target == 2
    waiters["n"] = 1  # now it waits, as it will at every look
    for i in range(2, 12):
        look(t + 0.25 * i)
    assert crew.target == 2
