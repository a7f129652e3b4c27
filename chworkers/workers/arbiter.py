"""The owner of the supervisor's state, and its loop: one thread that changes it.

Modelled on gunicorn's arbiter. :class:`Arbiter` holds everything that changes while a
supervisor runs: the settings (the one copy of :class:`SupervisorOptions` and the retry
policy), the task queue and the outcomes, the lease broker, the worker table (in its
:class:`~chworkers.workers.crew.Crew`), the stop mode (its
:class:`~chworkers.workers.shutdown.Shutdown`) and the fatal error. Its loop waits
(``poll``) on every worker's result pipe and process sentinel, on the writable task pipes
and on a wake-up pipe, and then, in order: runs the commands other threads sent, reads
results, reaps dead workers (re-queueing what they held), kills workers whose heartbeat
is stale while they run a task, tops the worker count back up and dispatches queued
tasks. Other threads never change this state: they read what it publishes (``options``,
``state``, ``mode``, ``error``) and send typed commands (:mod:`chworkers.workers.commands`)
with :meth:`Arbiter.tell` or :meth:`Arbiter.ask`, dispatched by type in one ``match``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar, cast

from chworkers.clickhouse.lease import LeaseBroker
from chworkers.clickhouse.retry import RetryPolicy
from chworkers.clickhouse.shardleases import ShardLeaseBrokers
from chworkers.errors import SupervisorStoppedError, WorkerBootError
from chworkers.ops import workerlogs
from chworkers.ops.metrics import Metrics
from chworkers.workers import sharedbuf
from chworkers.workers.commands import (
    Command,
    Mailbox,
    Reconfigure,
    RefreshGauges,
    RestartWorkers,
    SetTableLimits,
    Signal,
    Stats,
    Stop,
    SupervisorStats,
    SyncLogLevels,
)
from chworkers.workers.context import Connector
from chworkers.workers.crew import Crew
from chworkers.workers.middleware import Middleware
from chworkers.workers.options import SupervisorOptions, TableLimit
from chworkers.workers.outcomes import Outcomes
from chworkers.workers.processes import Processes
from chworkers.workers.reconfiguring import Reconfiguring
from chworkers.workers.shutdown import Shutdown
from chworkers.workers.tablelimits import TableLimits
from chworkers.workers.taskqueue import TaskQueue

log = logging.getLogger(__name__)

R = TypeVar("R")

_CHECK_EVERY = 0.1  # s between heartbeat checks


class Arbiter(Reconfiguring):
    """Owns a supervisor's state; its loop thread is the only code that changes it.

    ``connector(name)`` builds a worker's connections recipe (None: no ClickHouse);
    ``on_reload()`` returns the settings SIGHUP applies; ``on_exit()`` runs on the loop
    thread once the loop ended, before the broker closes and the middleware's
    ``after_supervisor_stop``.
    """

    def __init__(
        self,
        options: SupervisorOptions,
        retry: RetryPolicy,
        metrics: Metrics,
        middleware: list[Middleware],
        *,
        connector: Callable[[str], Connector | None],
        on_reload: Callable[[], Mapping[str, Any]] | None = None,
        on_exit: Callable[[], None] | None = None,
        table_limits: Mapping[str, TableLimit] | None = None,
    ) -> None:
        self._options = options
        self._retry = retry
        self._state = "new"
        self._error: BaseException | None = None
        self.metrics = metrics
        self.middleware = middleware
        self.queue = TaskQueue(options.queue_size, options.queue_max_bytes, self.wake)
        self.outcomes = Outcomes(
            metrics, middleware, self.queue, lambda: self._options, lambda: self._retry
        )
        self._shutdown = Shutdown(self.queue, self.outcomes)
        self.broker: LeaseBroker | ShardLeaseBrokers | None = None
        self.limits = TableLimits(table_limits or {}, metrics)
        self.finished = threading.Event()
        #: When the loop last turned (monotonic): a stale value means it is stuck.
        self.loop_beat = time.monotonic()
        self._connector = connector
        self._on_reload = on_reload
        self._on_exit = on_exit
        self._mailbox = Mailbox(self.wake, self.finished)
        self._ready = threading.Condition()
        self._crew: Crew | None = None
        self._procs: Processes | None = None
        self._thread: threading.Thread | None = None
        self._next_check = 0.0

    # What other threads may read.

    @property
    def options(self) -> SupervisorOptions:
        return self._options

    @property
    def retry(self) -> RetryPolicy:
        return self._retry

    @property
    def state(self) -> str:
        """new, running, stopped or failed."""
        return self._state

    @property
    def mode(self) -> str | None:
        """None while running normally, then draining, then stopping."""
        return self._shutdown.mode

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def started(self) -> bool:
        return self._thread is not None

    def in_loop(self) -> bool:
        """Whether the caller runs on the loop thread (e.g. in a future's callback)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def worker_count(self, state: str | None = None) -> int:
        """Workers in the table (``state``: only those in that state); from any thread,
        a snapshot."""
        crew = self._crew
        if crew is None:
            return 0
        handles = list(crew.workers.values())
        return len(handles) if state is None else sum(1 for h in handles if h.state == state)

    # Starting.

    def start(self, ctx: Any, broker: LeaseBroker | ShardLeaseBrokers | None) -> None:
        """Start the loop thread (the supervisor started the broker)."""
        self.broker = broker
        kept = sharedbuf.configure(self._options.kept_memory_files_bytes)
        log.debug("memory files kept for later tasks: at most %d bytes", kept)
        self._procs = Processes(
            ctx, on_server_restart=lambda _: self.outcomes.metrics.fork_server_restarts.inc()
        )
        self._crew = Crew(
            self,
            self._procs,
            self.queue,
            self.outcomes,
            broker,
            self._connector,
            self.middleware,
            self._notify_ready,
            self.limits,
        )
        self._state = "running"
        self._thread = threading.Thread(target=self._run, name="chworkers-supervisor", daemon=True)
        self._thread.start()

    def abandon(self, state: str) -> None:
        """The loop will never run (starting failed, or stop() came first): end in
        ``state`` (failed or stopped)."""
        self._state = state

    def wait_ready(self, timeout: float) -> None:
        """Block until the first workers are ready, raising when they cannot boot."""
        deadline = time.monotonic() + timeout
        crew = self._crew
        assert crew is not None
        with self._ready:
            while True:
                if self._error is not None:
                    raise self._error
                if self.finished.is_set():
                    raise SupervisorStoppedError("the supervisor stopped while starting")
                workers = list(crew.workers.values())
                if workers and not [h for h in workers if h.state == "starting"]:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WorkerBootError(
                        f"workers not ready after {timeout} s",
                        failures=crew.boot_failures,
                        last_error=crew.last_boot_error,
                    )
                self._ready.wait(min(remaining, 0.1))

    def join(self, timeout: float | None) -> bool:
        """Wait until the loop ended (and ``on_exit`` ran); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Wake up often: a signal delivered to another thread only runs its (Python)
        # handler once the main thread is between bytecodes, not while blocked in a wait.
        while not self.finished.wait(0.1):
            if deadline is not None and time.monotonic() >= deadline:
                return False
        if self._thread is not None:
            self._thread.join()
        return True

    # Talking to the loop from other threads.

    def wake(self) -> None:
        if self._procs is not None:
            self._procs.wake()

    def tell(self, command: Command[Any]) -> None:
        """Queue a command for the loop; its answer or error is only logged."""
        self._mailbox.tell(command)

    def ask(self, command: Command[R], timeout: float | None = None) -> R:
        """Run a command on the loop and return its answer (``timeout=None``: no limit).

        Raises :class:`SupervisorStoppedError` when the loop is not running and
        :class:`WaitTimeoutError` when it did not answer in time."""
        if self._thread is None or self.finished.is_set():
            raise SupervisorStoppedError(f"the supervisor is {self._state}")
        if self.in_loop():  # e.g. from a future's callback: run it now
            return cast(R, self._handle(command))
        return self._mailbox.ask(command, timeout)

    # The loop.

    def _run(self) -> None:
        crew = self._crew
        assert crew is not None
        try:
            while not (self._shutdown.mode == "stopping" and not crew.workers):
                self._iteration(crew)
        except BaseException as exc:
            log.exception("supervisor loop failed")
            self._error = self._error or exc
            crew.kill_all()
        finally:
            self._shutdown.fail_all(
                crew, self._error or SupervisorStoppedError("the supervisor stopped")
            )
            crew.rollout.abandon("the supervisor stopped")
            self._mailbox.refuse()
            self.finished.set()
            self._notify_ready()
            if self._procs is not None:
                self._procs.close()
            self._exited()

    def _iteration(self, crew: Crew) -> None:
        assert self._procs is not None
        events = self._procs.poll(self._timeout(crew))
        now = self.loop_beat = time.monotonic()
        for kind, h in events:
            if kind == "results":
                crew.read(h)
            elif kind == "sentinel":
                crew.reap(h)
            elif kind == "outbox":
                self._procs.flush(h)
        if self._mailbox:
            self._mailbox.deliver(self._handle)
        if now >= self._next_check:
            self._next_check = now + _CHECK_EVERY
            crew.check(now)
            sharedbuf.sweep()
            if self.mode is None:
                crew.autoscaler.look(now, self._options)
        if self.mode is None and self._options.autoscaling:
            crew.autoscaler.notice(now)
        crew.spawn_missing(now)
        crew.rollout.step(now)
        crew.dispatch()
        self._shutdown.progress(crew, now)

    def _timeout(self, crew: Crew) -> float:
        timeout = _CHECK_EVERY
        if crew.next_spawn > 0:
            timeout = min(timeout, max(0.0, crew.next_spawn - time.monotonic()))
        if self.limits and self.queue.parked:
            now = time.monotonic()
            wake = self.limits.next_wakeup(self.queue.parked_lanes(), now)
            if wake is not None:
                timeout = min(timeout, max(0.0, wake - now))
        return timeout

    def _exited(self) -> None:
        self._state = "failed" if self._error is not None else "stopped"
        sharedbuf.sweep(0.0)  # the memory files its tasks left for later ones
        if self._on_exit is not None:
            try:
                self._on_exit()
            except Exception:
                log.exception("supervisor: cleaning up after the loop failed")
        if self.broker is not None:
            self.broker.close()
        for middleware in self.middleware:
            try:
                middleware.after_supervisor_stop()
            except Exception:
                log.exception("middleware %r: after_supervisor_stop failed", middleware)

    def _notify_ready(self) -> None:
        with self._ready:
            self._ready.notify_all()

    # Commands, dispatched by type.

    def _handle(self, command: Command[Any]) -> object:
        match command:
            case Stop(graceful=graceful, timeout=timeout):
                self._shutdown.begin(self._crew, graceful, timeout)
            case Signal(signum=signum):
                self._on_signal(signum)
            case Reconfigure(changes=changes):
                self._reconfigure(changes)
            case SetTableLimits(limits=limits):
                self.limits.set(limits)
                log.info("table limits now: %s", dict(limits) or "none")
            case RestartWorkers():
                return self._restart_workers()
            case Stats():
                return self._stats(self._crew)
            case RefreshGauges():
                if self._crew is not None:
                    self._crew.refresh_gauges(self.metrics)
            case SyncLogLevels():
                if self._crew is not None:
                    self._crew.configure({"log_levels": workerlogs.levels()})
            case _:
                raise TypeError(f"not a supervisor command: {command!r}")
        return None

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.info("%s: reloading settings", name)
            self._reload()
        elif signum == signal.SIGUSR2:
            log.info("%s: restarting the workers one at a time", name)
            self._restart_workers()
        elif self.mode is None:
            log.info(
                "%s: draining within %s s, then stopping", name, self._options.graceful_timeout
            )
            self._shutdown.begin(self._crew, True, self._options.graceful_timeout)
        else:
            log.info("%s again: stopping now", name)
            self._shutdown.begin(self._crew, False, None)

    def _restart_workers(self) -> Future[int]:
        if self._crew is None or self.mode is not None:
            raise SupervisorStoppedError("the supervisor is stopping: no rolling restart")
        return self._crew.rollout.request()

    def stats(self) -> SupervisorStats:
        """From any thread: what is known without the loop (no workers, no leases)."""
        return self._stats(None)

    def _stats(self, crew: Crew | None) -> SupervisorStats:
        return SupervisorStats(
            state=self._state,
            workers=tuple(h.snapshot() for h in crew.workers.values()) if crew else (),
            queued=len(self.queue),
            queue_capacity=self.queue.maxsize,
            in_flight=crew.in_flight() if crew else 0,
            outstanding=self.outcomes.outstanding,
            tasks=dict(self.outcomes.counts),
            restarts=dict(self.outcomes.restarts),
            pool=self.broker.stats() if self.broker is not None and crew else None,
            target=crew.target if crew else self._options.initial_workers,
            table_limits=self.limits.snapshot(self.queue.parked_by_table()),
        )

    # Stopping.

    def fatal(self, error: BaseException) -> None:
        """Give up: fail every task and stop the workers (on the loop thread)."""
        log.error("%s", error)
        self._error = self._error or error
        self.queue.close(str(error))
        self._shutdown.fail_all(self._crew, error)
        self._shutdown.stop_workers(self._crew, fast=True)
        self._notify_ready()
