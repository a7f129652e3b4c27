"""Autoscaling: as many workers as the work needs, within ``min_workers``..``max_workers``.

The supervisor's loop asks :class:`Autoscaler` a few times a second whether to change
the worker count, and it answers from what the loop knows:

* **up** by one when tasks have waited in the queue for ``scale_up_after``: the oldest
  one has waited that long, or every look over that while saw tasks queued (the
  workers do not keep up: tasks are handed to workers ahead of need, so a task that
  waits in the queue waits because every worker is full; a feeder that keeps only a
  few tasks queued, such as the daemon's dispatcher with its backlog in the spool,
  keeps each task there briefly, but never lets the queue empty), no worker is booting nor
  was at any look of the last while (one just ready has not asked for its connection
  yet), the last change is ``scale_up_after`` old, and the machine had CPU to spare over the last
  look (at least ``scale_up_min_idle_cpu`` of its CPU time idle, from ``/proc/stat``: a
  worker more on a saturated machine only adds contention), and no look over that
  while (at least a second) saw workers wait for a ClickHouse connection (read at
  every turn of the loop: a waiter is there only between a release and a grant) (the
  ``max_connections`` budget is the limit then: a worker more would wait too);
* **down** by one after ``scale_down_after`` during which, at every look, nothing was
  queued and some worker had nothing to do, counted from the last change as well.

The two conditions exclude each other (a queued task against an empty queue), the
down one must hold for a long while (30 s by default) after any change, and each step
is one worker: the count moves towards the load and does not flap. Every change is
logged with its reason and counted in ``chworkers_worker_scaling_total{direction}``;
``chworkers_workers_target`` is the count aimed at. Tasks in tables held back by their
limits (:mod:`chworkers.workers.tablelimits`) do not count as backlog: more workers
would not start them sooner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from chworkers.ops.metrics import Metrics
from chworkers.workers.options import SupervisorOptions
from chworkers.workers.processes import WorkerHandle
from chworkers.workers.taskqueue import TaskQueue

log = logging.getLogger(__name__)

#: How often the autoscaler looks (s).
LOOK_EVERY = 0.25


class _Crew(Protocol):
    """What the autoscaler needs of the crew."""

    @property
    def workers(self) -> dict[str, WorkerHandle]: ...

    @property
    def target(self) -> int: ...

    def scale(self, n: int) -> None: ...


class CpuIdle:
    """The fraction of the machine's CPU time that was idle between two reads of
    ``/proc/stat`` (None without it)."""

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat", "rb") as fh:
                fields = [int(x) for x in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return idle, sum(fields[:8])  # guest time is already in user

    def sample(self) -> float | None:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return None
        return (now[0] - last[0]) / (now[1] - last[1])


class Autoscaler:
    """Decides, on the supervisor's loop, when to add or retire a worker."""

    def __init__(
        self,
        pool: _Crew,
        queue: TaskQueue,
        metrics: Metrics,
        waiting_for_connections: Callable[[], int] = lambda: 0,
    ) -> None:
        self.pool = pool
        self.waiting_for_connections = waiting_for_connections
        self.queue = queue
        self.metrics = metrics
        self.cpu = CpuIdle()
        self.next_look = 0.0
        self.last_change = 0.0
        self.slack_since: float | None = None
        self.idle_cpu: float | None = None
        self.connection_wait_seen = -1e9  # when a look last saw workers wait for one
        self.booting_seen = -1e9  # when a look last saw a worker added still booting
        self.held: str | None = None  # why a backlog gets no worker, once said
        #: Since when every look saw tasks queued (None: the last look saw none).
        self.queued_since: float | None = None

    def notice(self, now: float) -> None:
        """At every turn of the loop: whether workers wait for a connection. A waiter is
        there only between a release and the next grant, which four looks a second can
        miss for a whole second; the loop turns at every result."""
        if self.waiting_for_connections():
            self.connection_wait_seen = now

    def look(self, now: float, options: SupervisorOptions) -> None:
        """Every few turns of the loop: change the count by one when it should."""
        if now < self.next_look:
            return
        self.next_look = now + LOOK_EVERY
        self.idle_cpu = self.cpu.sample()
        if not options.autoscaling:
            self.slack_since = None
            return
        if self.waiting_for_connections():
            self.connection_wait_seen = now
        low, high = options.worker_bounds
        pool = self.pool
        target = pool.target
        if target < low or target > high:  # the bounds changed (SIGHUP)
            self._change(min(max(target, low), high), f"bounds now {low}..{high}", now)
            return
        workers = [h for h in pool.workers.values() if h.leaving is None and h.kill_reason is None]
        if any(h.state == "starting" for h in workers):
            self.booting_seen = now
        waited = self.queue.oldest_wait(now)
        if waited > 0.0:  # queued since the front task came, at least
            start = now - waited
            since = self.queued_since
            self.queued_since = start if since is None else min(since, start)
        else:
            self.queued_since = None
        backlog = 0.0 if self.queued_since is None else now - self.queued_since
        if backlog < options.scale_up_after:
            self.held = None  # the backlog is gone: a new one is said anew
        if waited > 0.0:
            self.slack_since = None
        elif any(h.state == "ready" and not h.assigned for h in workers):
            if self.slack_since is None:
                self.slack_since = now
        else:
            self.slack_since = None
        if backlog >= options.scale_up_after and target < high:
            self._maybe_up(now, options, workers, backlog, waited, target)
        elif (
            self.slack_since is not None
            and target > low
            and now - max(self.slack_since, self.last_change) >= options.scale_down_after
        ):
            self._change(
                target - 1,
                f"a worker idle and nothing queued for {now - self.slack_since:.0f} s",
                now,
            )
            self.slack_since = now

    def _maybe_up(
        self,
        now: float,
        options: SupervisorOptions,
        workers: list[WorkerHandle],
        backlog: float,
        waited: float,
        target: int,
    ) -> None:
        if now - self.last_change < options.scale_up_after:
            return
        # Not while a worker added is booting, nor for a while after it is ready: whether
        # workers wait for a connection is only known from looks at workers that all serve
        # (the one just ready has not asked for its lease yet).
        window = max(options.scale_up_after, 4 * LOOK_EVERY)
        if now - self.booting_seen < window:
            return
        idle = self.idle_cpu
        if (
            options.scale_up_min_idle_cpu > 0
            and idle is not None
            and (idle < options.scale_up_min_idle_cpu)
        ):
            self._hold(
                "cpu",
                backlog,
                waited,
                f"the CPU was {idle:.0%} idle, below scale_up_min_idle_cpu "
                f"({options.scale_up_min_idle_cpu:.0%}): a worker more would only contend",
            )
            return
        if now - self.connection_wait_seen < window:
            self._hold(
                "connections",
                backlog,
                waited,
                "workers wait for a ClickHouse connection: max_connections is the limit, "
                "not the workers",
            )
            return
        cpu = f", CPU {idle:.0%} idle" if idle is not None else ""
        self._change(target + 1, f"{self._queued(backlog, waited)}{cpu})", now)

    def _queued(self, backlog: float, waited: float) -> str:
        """What the queue showed, for the log (without its closing parenthesis)."""
        return (
            f"tasks queued for {backlog:.1f} s (the oldest waited {waited:.1f} s, "
            f"{len(self.queue)} queued"
        )

    def _hold(self, reason: str, backlog: float, waited: float, why: str) -> None:
        """A backlog the count stays below ``max_workers`` for: said once per backlog
        and reason (at every look it would flood the log; at DEBUG nobody saw it)."""
        if reason == self.held:
            return
        self.held = reason
        log.info("autoscale: %s) but no worker is added: %s", self._queued(backlog, waited), why)

    def _change(self, n: int, why: str, now: float) -> None:
        self.held = None
        before = self.pool.target
        if n == before:
            return
        log.info("autoscale: %d -> %d workers: %s", before, n, why)
        self.metrics.worker_scaling.labels("up" if n > before else "down").inc()
        self.last_change = now
        self.pool.scale(n)
        self.metrics.workers_target.set(n)
