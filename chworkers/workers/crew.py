"""The worker table and what the supervisor does with it: keep it at strength, feed it.

:class:`Crew` starts workers up to the target count (with backoff when they die young,
giving up instead of crash-looping when they die at boot), reads their messages, reaps
the dead (re-queueing what they held), kills those whose heartbeat is stale while they
run a task, retires surplus or recycled ones and hands queued tasks to the least busy
(through its :class:`~chworkers.workers.dispatch.Dispatcher`).
It belongs to the :class:`~chworkers.workers.arbiter.Arbiter`, whose loop thread is the
only caller of every method here; what it needs of its owner (settings, the stop mode,
how to give up) it asks through :class:`Owner`.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from chworkers.clickhouse.lease import LeaseBroker
from chworkers.clickhouse.retry import RetryPolicy
from chworkers.clickhouse.shardleases import ShardLeaseBrokers
from chworkers.errors import SupervisorStoppedError, WorkerBootError
from chworkers.ops import workerlogs
from chworkers.ops.metrics import Metrics
from chworkers.workers import channel
from chworkers.workers.autoscale import Autoscaler
from chworkers.workers.context import BEAT, BUSY, CURRENT, STATE, Connector
from chworkers.workers.dispatch import Dispatcher
from chworkers.workers.exits import died_unsaid, exit_reason, replacement
from chworkers.workers.mainguard import EXIT_REIMPORTED, reimported_message
from chworkers.workers.middleware import Middleware
from chworkers.workers.options import SupervisorOptions
from chworkers.workers.outcomes import Outcomes
from chworkers.workers.processes import STOP_GRACE, Processes, WorkerHandle
from chworkers.workers.rollout import Rollout
from chworkers.workers.tablelimits import TableLimits
from chworkers.workers.taskqueue import TaskQueue
from chworkers.workers.worker import WorkerSpec

log = logging.getLogger(__name__)

_YOUNG = 1.0  # s: a worker dying sooner counts towards the restart backoff


class Owner(Protocol):
    """What the crew asks of the supervisor's state (the Arbiter)."""

    @property
    def options(self) -> SupervisorOptions: ...

    @property
    def retry(self) -> RetryPolicy: ...

    @property
    def mode(self) -> str | None: ...

    @property
    def error(self) -> BaseException | None: ...

    def fatal(self, error: BaseException) -> None: ...


class Crew:
    def __init__(
        self,
        owner: Owner,
        procs: Processes,
        queue: TaskQueue,
        outcomes: Outcomes,
        broker: LeaseBroker | ShardLeaseBrokers | None,
        connector: Callable[[str], Connector | None],
        middleware: Sequence[Middleware],
        on_ready: Callable[[], None],
        limits: TableLimits,
    ) -> None:
        self.owner = owner
        self.limits = limits
        self.procs = procs
        self.queue = queue
        self.outcomes = outcomes
        self.broker = broker
        self.connector = connector
        self.middleware = middleware
        self.on_ready = on_ready
        self.target = owner.options.initial_workers
        self.boot_failures = 0
        self.last_boot_error: str | None = None
        self.young_deaths = 0
        self.next_spawn = 0.0
        self.dispatcher = Dispatcher(lambda: owner.options, procs, queue, outcomes, limits)
        self.rollout = Rollout(self)
        self.autoscaler = Autoscaler(self, queue, outcomes.metrics, self._waiting_for_connections)

    def _waiting_for_connections(self) -> int:
        return self.broker.waiting() if self.broker is not None else 0

    @property
    def workers(self) -> dict[str, WorkerHandle]:
        return self.procs.table

    def in_flight(self) -> int:
        return sum(len(h.assigned) for h in self.workers.values())

    def ready(self) -> Iterable[WorkerHandle]:
        return (h for h in self.workers.values() if h.state == "ready")

    def refresh_gauges(self, metrics: Metrics) -> None:
        """The gauges that describe the workers, as of now."""
        states = Counter(h.public_state() for h in self.workers.values())
        for state in ("starting", "idle", "busy", "stopping"):
            metrics.workers.labels(state).set(states[state])
        metrics.pool_idle.set(sum(h.gauges.get("pool_idle", 0.0) for h in self.workers.values()))
        rss = [h.gauges.get("memory", 0.0) for h in self.workers.values()]
        metrics.worker_memory.labels("max").set(max(rss, default=0.0))
        metrics.worker_memory.labels("sum").set(sum(rss))
        metrics.worker_memory_limit.set(self.owner.options.max_worker_memory or 0)
        metrics.workers_target.set(self.target)
        if self.limits:
            self.limits.publish(self.queue.parked_by_table())

    # Starting.

    def spawn_missing(self, now: float) -> None:
        if self.owner.mode == "stopping" or self.owner.error is not None:
            return
        if self.owner.mode == "draining" and not len(self.queue):
            return  # nothing left for a fresh worker: the supervisor is about to stop
        if now < self.next_spawn:
            return
        extra = self.rollout.extra()  # started beside an old worker it will replace
        active = sum(1 for h in self.workers.values() if h.leaving is None and h.name != extra)
        while active < self.target:
            self.spawn()
            active += 1
            if self.young_deaths:  # backing off: one at a time
                self.next_spawn = now + self._backoff()
                return
        self.next_spawn = 0.0

    def _backoff(self) -> float:
        opts = self.owner.options
        delay = opts.restart_backoff * 2 ** max(0, self.young_deaths - 1)
        return float(min(opts.restart_backoff_max, delay))

    def spawn(self) -> WorkerHandle | None:
        """Start one worker (None when it cannot start: the supervisor gives up)."""
        opts = self.owner.options
        try:
            return self.procs.start(self._spec, fork=opts.start_method == "fork")
        except Exception as exc:  # e.g. middleware that cannot be pickled: no point retrying
            self.owner.fatal(
                WorkerBootError(
                    f"cannot start a worker process: {type(exc).__name__}: {exc}",
                    failures=1,
                    last_error=str(exc),
                )
            )
            return None

    def _spec(self, name: str, close_fds: Sequence[int]) -> WorkerSpec:
        opts = self.owner.options
        max_tasks = opts.max_tasks_per_worker
        if max_tasks is not None and opts.max_tasks_jitter:
            max_tasks += random.randint(0, opts.max_tasks_jitter)
        return WorkerSpec(
            name=name,
            parent_pid=os.getpid(),
            connect=self.connector(name),
            middleware=[m for m in self.middleware if m.worker_side],
            heartbeat_interval=opts.heartbeat_interval,
            max_tasks=max_tasks,
            settings={"retry": self.owner.retry, "max_worker_memory": opts.max_worker_memory},
            close_fds=close_fds,
            log_levels=workerlogs.levels(),
            log_stderr=isinstance(sys.stderr, workerlogs.StderrToLog),
        )

    # Reading.

    def read(self, h: WorkerHandle) -> None:
        for kind, body in self.procs.messages(h):
            self._on_message(h, kind, body)

    def _on_message(self, h: WorkerHandle, kind: str, body: Any) -> None:
        if kind == channel.LOG:
            try:
                workerlogs.emit(body)
            except Exception:  # a handler's failure must not stop supervision
                log.exception("cannot log a record of %s", h.name)
        elif kind == channel.RESULTS:
            results, delta = body
            now = time.monotonic()
            for task_id, ok, data, duration in results:
                task = h.assigned.pop(task_id, None)
                if task is None:
                    continue
                self.limits.release(task, now)
                h.assigned_bytes -= task.nbytes
                h.done += 1
                self.dispatcher.observe(duration)
                self.outcomes.resolve(task, ok, data, duration)
            if delta is not None:
                h.gauges.update(self.outcomes.apply_delta(delta))
        elif kind == channel.READY:
            h.state = "ready"
            h.ready_at = time.monotonic()
            self.boot_failures = 0
            self.on_ready()
        elif kind == channel.BOOT_FAILED:
            h.boot_error = str(body)
        elif kind == channel.RETIRING:
            h.leaving = h.leaving or str(body)

    # Reaping and checking.

    def reap(self, h: WorkerHandle) -> None:
        server_end = self.procs.lost_server(h)
        if server_end is not None and h.kill_reason is None:
            # Its fork server died, and with it the only news of its exit: it may run
            # on, unseen, holding a task handed back below. It goes for sure (its pid was
            # a grandchild of this process a moment ago), and is replaced without
            # counting as a crash or a boot failure: the next start gets a new server.
            log.warning("%s (pid %s): its fork server %s; killing it", h.name, h.pid, server_end)
            self.procs.kill(h, "forkserver")
        self.read(h)  # results it sent before dying are results, not lost tasks
        exitcode = self.procs.remove(h)
        now = time.monotonic()
        if self.broker is not None:
            self.broker.reclaim(h.name)
        booted = h.state != "starting"
        reason = exit_reason(h, booted, exitcode)
        mode = self.owner.mode
        running = int(h.heartbeat[CURRENT])
        held = list(h.assigned.values())
        for task in held:
            self.limits.release(task, now)  # a dead worker's slots come back
        if held and mode != "stopping":
            self.outcomes.requeue(held, running if reason in ("crashed", "hung") else None, reason)
        elif held:
            for task in held:
                self.outcomes.fail(
                    task,
                    SupervisorStoppedError(
                        f"{task.description} was running when the supervisor stopped"
                    ),
                )
        # While draining, a worker is replaced only while tasks wait (its own, handed
        # back, or queued ones): the drain needs them done before its deadline.
        replaced = mode is None or (mode == "draining" and len(self.queue) > 0)
        # Exits asked for (recycling by count or memory, a rolling restart, a stop) are
        # routine: the worker said why already; only the unplanned ones warn.
        planned = ("recycled", "memory", "rolling", "stopped")
        level = logging.INFO if reason in planned else logging.WARNING
        log.log(
            level,
            "%s (pid %s) exited with code %s: %s; %d task(s) handed back%s",
            h.name,
            h.pid,
            exitcode,
            reason,
            len(held) if mode != "stopping" else 0,
            replacement(mode, replaced, len(self.queue)),
        )
        self.outcomes.worker_exited(h.name, h.pid, reason, replaced=replaced)
        if reason in ("boot", "crashed", "hung") and replaced:
            uptime = now - h.spawned_at
            self.young_deaths = self.young_deaths + 1 if uptime < _YOUNG or not booted else 0
            if self.young_deaths:
                self.next_spawn = now + self._backoff()
        if not booted and exitcode == EXIT_REIMPORTED:
            # The main module started a Supervisor in the worker: every worker would.
            self.owner.fatal(
                WorkerBootError(
                    reimported_message(self.owner.options.start_method),
                    failures=1,
                    last_error=f"exit code {exitcode}",
                )
            )
        elif (
            not booted
            and reason == "boot"
            and self.rollout.boot_failed(
                h.name,
                h.boot_error or died_unsaid(exitcode),
                self.owner.options.max_boot_failures,
            )
        ):
            pass  # a rolling restart's fresh worker: the old ones go on serving
        elif not booted and reason == "boot":
            self.boot_failures += 1
            self.last_boot_error = h.boot_error or died_unsaid(exitcode)
            if self.boot_failures >= self.owner.options.max_boot_failures:
                self.owner.fatal(
                    WorkerBootError(
                        f"{self.boot_failures} worker processes in a row died while starting; "
                        f"last: {self.last_boot_error}",
                        failures=self.boot_failures,
                        last_error=self.last_boot_error,
                    )
                )

    def check(self, now: float) -> None:
        opts = self.owner.options
        for h in list(self.workers.values()):
            if h.stop_deadline is not None and now > h.stop_deadline:
                self.procs.kill(h, h.kill_reason or h.leaving or "stopped", signal.SIGKILL)
            elif h.kill_reason is not None:
                continue
            elif h.state == "starting" and now - h.spawned_at > opts.boot_timeout:
                h.boot_error = f"not ready after {opts.boot_timeout} s"
                self.procs.kill(h, "boot", signal.SIGKILL)
            elif h.heartbeat[STATE] == BUSY and now - h.heartbeat[BEAT] > opts.hung_timeout:
                log.warning(
                    "%s (pid %s) has not beaten for %.1f s while running task %d: killing it",
                    h.name,
                    h.pid,
                    now - h.heartbeat[BEAT],
                    int(h.heartbeat[CURRENT]),
                )
                self.procs.kill(h, "hung", signal.SIGKILL)
            if h.ready_at is not None and now - h.ready_at > _YOUNG and self.young_deaths:
                self.young_deaths = 0

    def dispatch(self) -> None:
        """Hand queued tasks to the workers that have room for them."""
        if self.owner.error is None:
            self.dispatcher.dispatch(self.workers.values())

    def configure(self, settings: dict[str, Any]) -> None:
        """Send changed settings to the workers that run (new ones start with them)."""
        for h in list(self.ready()):
            self.procs.send(h, channel.CONFIGURE, settings)

    # Scaling and stopping.

    def scale(self, n: int) -> None:
        self.target = n
        extra = self.rollout.extra()
        active = [
            h
            for h in self.workers.values()
            if h.leaving is None and h.kill_reason is None and h.name != extra
        ]
        surplus = len(active) - n
        # Those a rolling restart has still to replace go first: they are going anyway,
        # and a fresh worker booting for one is handed to the next (rollout.py).
        replacing = self.rollout.to_replace()
        for h in sorted(
            active,
            key=lambda h: (h.name not in replacing, h.state == "ready", len(h.assigned)),
        )[: max(0, surplus)]:
            self.retire(h, "stopped")

    def retire(self, h: WorkerHandle, reason: str) -> None:
        """Let a worker finish what it holds, then exit."""
        h.leaving = h.leaving or reason
        if h.state == "starting":
            self.procs.kill(h, reason)
        else:
            self.procs.send(h, channel.STOP, None)
            h.stop_deadline = time.monotonic() + self.owner.options.graceful_timeout + STOP_GRACE

    def stop(self, fast: bool) -> None:
        self.rollout.abandon("the supervisor is stopping")
        for h in list(self.workers.values()):
            if fast or h.state == "starting":
                self.procs.kill(h, "stopped")
            else:
                self.retire(h, "stopped")
                h.stop_deadline = time.monotonic() + STOP_GRACE

    def fail_held(self, error: BaseException) -> None:
        now = time.monotonic()
        for h in self.workers.values():
            for task in h.assigned.values():
                self.limits.release(task, now)
                self.outcomes.fail(task, error)
            h.assigned.clear()
            h.assigned_bytes = 0

    def kill_all(self) -> None:
        """The loop failed: kill every worker now and reap it."""
        for h in list(self.workers.values()):
            self.procs.kill(h, "stopped")
            self.procs.wait_exit(h, 1.0)  # its status unread: reap tells a lost server
            self.reap(h)
