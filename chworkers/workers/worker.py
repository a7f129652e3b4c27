"""The worker process: pre-fork configuration, post-start init, and the task loop.

:class:`WorkerSpec` is everything a worker needs, built in the supervisor before the
process starts and pickled to it (with every start method). It holds settings and
factories, never live clients or sockets. :func:`worker_main` runs in the new process:
``init_process`` opens the ClickHouse pool (through the lease client, so all workers
together stay within ``max_connections``), creates the metrics recorder and runs the
middleware's ``after_worker_boot``; only then does the worker report ready.

The loop reads task messages between tasks, runs each task under the middleware hooks
(:mod:`chworkers.workers.execute` runs a task; the pool's recipe and hooks are
:mod:`chworkers.workers.workerpool`'s, re-exported here) and sends results back in small
batches. It beats a heartbeat in shared memory from the thread that runs tasks, so a
task stuck for longer than the supervisor's ``hung_timeout`` shows up as a stale
heartbeat and gets the worker replaced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from chworkers.ops import workerlogs
from chworkers.pids import alive
from chworkers.wording import plural
from chworkers.workers import channel
from chworkers.workers.context import (
    BEAT,
    BUSY,
    CURRENT,
    IDLE,
    STARTED,
    STARTING,
    STATE,
    STOPPING,
    Connector,
    TaskInfo,
    WorkerContext,
)
from chworkers.workers.execute import execute as execute
from chworkers.workers.execute import insert as insert
from chworkers.workers.middleware import Middleware
from chworkers.workers.recycle import MemoryWatch
from chworkers.workers.results import encode_error, encode_result
from chworkers.workers.signals import HANDLED
from chworkers.workers.workerpool import PoolConnector as PoolConnector
from chworkers.workers.workerpool import RecordingHooks as RecordingHooks

log = logging.getLogger(__name__)

#: Exit status of a worker whose ``init_process`` failed (gunicorn's WORKER_BOOT_ERROR).
EXIT_BOOT_FAILED = 3
EXIT_OK = 0

#: A result flows back at once when its task ran longer than this; quicker ones are
#: batched so that a stream of tiny tasks costs one message per batch, not per task.
_BATCH_BELOW = 0.001
_BATCH_MAX = 256
_BATCH_WAIT = 0.005


@dataclass
class WorkerSpec:
    """A worker's configuration, built before the process starts."""

    name: str
    parent_pid: int
    connect: Connector | None = None
    middleware: Sequence[Middleware] = ()
    heartbeat_interval: float = 1.0
    #: Tasks after which the worker exits to be replaced (jitter already applied).
    max_tasks: int | None = None
    #: Settings that SIGHUP may change (e.g. ``retry``); see ``CONFIGURE``.
    settings: dict[str, Any] = field(default_factory=dict)
    #: Supervisor-side descriptors a forked child inherited and must close.
    close_fds: Sequence[int] = ()
    #: Log levels of the supervisor's process (see :func:`workerlogs.levels`).
    log_levels: dict[str, int] = field(default_factory=dict)
    #: Turn stray stderr writes into log records (the supervisor logs JSON).
    log_stderr: bool = False


_CURRENT: WorkerContext | None = None


def beat() -> None:
    """Tell the supervisor this worker is making progress (call it from long tasks, so
    that they are not taken for hung); does nothing outside a worker."""
    if _CURRENT is not None:
        _CURRENT.beat()


class _Sender:
    """The worker's end of its result pipe, shared by the task loop and by log records
    from any thread: one whole message at a time."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, kind: str, body: Any) -> None:
        with self._lock:
            channel.send(self.conn, kind, body)

    def log(self, record: dict[str, Any]) -> None:
        self.send(channel.LOG, record)


def worker_main(spec: WorkerSpec, tasks_in: Any, results_out: Any, heartbeat: Any) -> None:
    """Entry point of a worker process."""
    global _CURRENT
    for fd in spec.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    results = _Sender(results_out)
    workerlogs.install(results.log, spec.name, spec.log_levels, capture_stderr=spec.log_stderr)
    ignored = _leave_signals_to_supervisor(spec.parent_pid)
    heartbeat[BEAT] = time.monotonic()
    heartbeat[STATE] = STARTING
    heartbeat[CURRENT] = -1
    worker = _CURRENT = WorkerContext(spec.name, spec.settings, heartbeat)
    try:
        init_process(worker, spec)
    except BaseException as exc:
        log.error("%s: init_process failed", spec.name, exc_info=True)
        results.send(channel.BOOT_FAILED, f"{type(exc).__name__}: {exc}")
        sys.exit(EXIT_BOOT_FAILED)
    results.send(channel.READY, {"pid": worker.pid, "name": worker.name})
    try:
        _Loop(worker, spec, tasks_in, results, heartbeat, ignored).run()
    finally:
        for middleware in spec.middleware:
            try:
                middleware.before_worker_shutdown(worker)
            except Exception:
                log.exception("%s: before_worker_shutdown failed", worker.name)
        if worker.connections is not None:
            worker.connections.close()


class _Ignored:
    """SIGTERMs a worker ignored since the loop last said so (the handler only counts:
    logging from a signal handler could deadlock on the result pipe's lock)."""

    def __init__(self) -> None:
        self.sigterm = 0


def _leave_signals_to_supervisor(parent_pid: int) -> _Ignored:
    """The supervisor decides when workers stop: a SIGTERM, a Ctrl-C or a hangup sent to
    the whole process group (``timeout``, ``kill -TERM -PGID``, ``tini -g``, a terminal)
    reaches the supervisor too, which drains and tells its workers when to go; it must
    not cut a task halfway. A SIGTERM still ends a worker whose supervisor is gone.
    The fork server starts workers with these signals blocked (see
    :mod:`chworkers.workers.forkserver`): they are unblocked once handled."""

    ignored = _Ignored()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if alive(parent_pid):
            ignored.sigterm += 1
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # a rolling restart is the supervisor's
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
    return ignored


def init_process(worker: WorkerContext, spec: WorkerSpec) -> None:
    """Post-start setup: connections, metrics and middleware, created in this process."""
    if spec.connect is not None:
        worker.connections = spec.connect(worker)
    for middleware in spec.middleware:
        middleware.after_worker_boot(worker)


class _Loop:
    def __init__(
        self,
        worker: WorkerContext,
        spec: WorkerSpec,
        tasks_in: Any,
        results_out: _Sender,
        beat: Any,
        ignored: _Ignored | None = None,
    ) -> None:
        self.worker = worker
        self.ignored = ignored or _Ignored()
        self.spec = spec
        self.tasks_in = tasks_in
        self.results_out = results_out
        self.beat = beat
        self.local: deque[tuple[int, str, bytes, list[Any]]] = deque()
        self.results: list[tuple[int, bool, bytes, float]] = []
        self.first_unsent = 0.0
        self.done = 0
        self.stopping = False
        self._orphaned = False
        self._next_parent_check = 0.0
        self.memory = MemoryWatch(worker.name, lambda rss: worker.metrics.set("memory", float(rss)))

    def run(self) -> None:
        # A broken pipe means the supervisor is gone; what we held runs again elsewhere.
        try:
            with contextlib.suppress(BrokenPipeError, EOFError):
                self._run()
        finally:
            self.memory.close()

    def _run(self) -> None:
        spec = self.spec
        beat = self.beat
        beat[STATE] = IDLE
        while not self.orphaned:
            self._say_ignored()
            if not self.local:
                if self.stopping:
                    break
                self.flush()
                if not self._wait():
                    break
            self._read_available()
            if not self.local or self.orphaned:
                continue
            duration = self._run_one(self.local.popleft())
            self.done += 1
            if spec.max_tasks is not None and self.done >= spec.max_tasks:
                self._retire("recycled")
                break
            why = self.memory.over(self.worker.settings.get("max_worker_memory"), duration)
            if why is not None:
                # The tasks it holds but has not started go to other workers. How many
                # is the supervisor's to say (its exit line): some may still be in the
                # pipe, unread here.
                log.warning(
                    "%s: %s after %s: replacing it (the tasks it was sent but has not "
                    "started go to other workers)",
                    self.worker.name,
                    why,
                    plural(self.done, "task"),
                )
                self._retire("memory")
                break
        beat[STATE] = STOPPING
        if not self.orphaned:
            self.flush()

    def _say_ignored(self) -> None:
        if self.ignored.sigterm:
            self.ignored.sigterm = 0
            log.info(
                "%s: SIGTERM left to the supervisor (pid %d), which stops its workers "
                "(SIGKILL ends this one at once)",
                self.worker.name,
                self.spec.parent_pid,
            )

    def _retire(self, reason: str) -> None:
        """Exit after this task, to be replaced (its results first)."""
        self.flush()
        self.results_out.send(channel.RETIRING, reason)

    @property
    def orphaned(self) -> bool:
        """The supervisor died: nobody would get our results, and the tasks we hold are
        (or will be) run again by whoever replays them, so stop now."""
        now = time.monotonic()
        if not self._orphaned and now >= self._next_parent_check:
            self._next_parent_check = now + 0.5
            if not alive(self.spec.parent_pid):
                log.warning("%s: the supervisor is gone; exiting", self.worker.name)
                self._orphaned = True
        return self._orphaned

    def _wait(self) -> bool:
        """Block until a message arrives; False when the supervisor is gone."""
        spec = self.spec
        while True:
            self.beat[BEAT] = time.monotonic()
            self._say_ignored()
            try:
                if self.tasks_in.poll(spec.heartbeat_interval):
                    return True
            except (EOFError, OSError):
                return False
            # Not os.getppid(): under forkserver a worker's parent is the fork server.
            if not alive(spec.parent_pid):
                log.warning("%s: supervisor is gone, exiting", self.worker.name)
                return False

    def _read_available(self) -> None:
        """Read the messages that have arrived, up to the first one with tasks: the rest
        are read before the next task, so a stream of large tasks is not read to its end
        before the first one runs."""
        try:
            while self.tasks_in.poll(0):
                kind, body = channel.receive(self.tasks_in)
                if kind == channel.TASKS:
                    self.local.extend(body)
                    if self.local:
                        break
                elif kind == channel.CONFIGURE:
                    levels = body.pop("log_levels", None)
                    if levels is not None:
                        workerlogs.apply_levels(levels)
                    self.worker.settings.update(body)
                elif kind == channel.STOP:
                    self.stopping = True
        except (EOFError, OSError):
            self._orphaned = True  # the supervisor is gone

    def _run_one(self, wire: tuple[int, str, bytes, list[Any]]) -> float:
        """Run one task; returns how long it took."""
        task_id, kind, payload, buffers = wire
        worker, beat = self.worker, self.beat
        started = time.monotonic()
        beat[CURRENT] = task_id
        beat[STARTED] = started
        beat[BEAT] = started
        beat[STATE] = BUSY
        info = TaskInfo(task_id, kind)
        result: Any = None
        error: BaseException | None = None
        try:
            for middleware in self.spec.middleware:
                middleware.before_task(worker, info)
            result = execute(worker, info, payload, buffers)
        except Exception as exc:
            error = exc
        duration = time.monotonic() - started
        for middleware in self.spec.middleware:
            try:
                middleware.after_task(worker, info, result, error, duration)
            except Exception:
                log.exception("%s: after_task failed for task %d", worker.name, task_id)
        beat[STATE] = IDLE
        beat[CURRENT] = -1
        beat[BEAT] = time.monotonic()
        if error is None:
            self.results.append((task_id, True, encode_result(result), duration))
        else:
            self.results.append((task_id, False, encode_error(error), duration))
        if len(self.results) == 1:
            self.first_unsent = started
        if (
            error is not None
            or duration >= _BATCH_BELOW
            or len(self.results) >= _BATCH_MAX
            or time.monotonic() - self.first_unsent >= _BATCH_WAIT
        ):
            self.flush()
        return duration

    def flush(self) -> None:
        delta = self.worker.metrics.drain()
        if self.results or delta is not None:
            self.results_out.send(channel.RESULTS, (self.results, delta))
            self.results = []
