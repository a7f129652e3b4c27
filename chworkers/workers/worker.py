"""The worker process: pre-fork configuration, post-start init, and the task loop.

:class:`WorkerSpec` is everything a worker needs, built in the supervisor before the
process starts and pickled to it (with every start method). It holds settings and
factories, never live clients or sockets. :func:`worker_main` runs in the new process:
``init_process`` opens the ClickHouse pool (through the lease client, so all workers
together stay within ``max_connections``), creates the metrics recorder and runs the
middleware's ``after_worker_boot``; only then does the worker report ready.

The loop reads task messages between tasks, runs each task under the middleware hooks
and sends results back in small batches. It beats a heartbeat in shared memory from the
thread that runs tasks, so a task stuck for longer than the supervisor's ``hung_timeout``
shows up as a stale heartbeat and gets the worker replaced.
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
from typing import Any

from chworkers.clickhouse import schema
from chworkers.clickhouse.hooks import PoolHooks
from chworkers.clickhouse.inserts import InsertResult, run_insert
from chworkers.clickhouse.partitions import partition_keys
from chworkers.clickhouse.pool import ConnectionPool, PoolOptions
from chworkers.ops import workerlogs
from chworkers.pids import alive
from chworkers.workers import channel, tasks
from chworkers.workers.context import (
    BEAT,
    BUSY,
    CURRENT,
    IDLE,
    STARTED,
    STARTING,
    STATE,
    STOPPING,
    Connections,
    Connector,
    TaskInfo,
    WorkerContext,
)
from chworkers.workers.middleware import Middleware
from chworkers.workers.recycle import MemoryWatch

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
    # The supervisor decides when workers stop: a Ctrl-C or a hangup sent to the whole
    # process group must not interrupt a task halfway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # a rolling restart is the supervisor's
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
        _Loop(worker, spec, tasks_in, results, heartbeat).run()
    finally:
        for middleware in spec.middleware:
            try:
                middleware.before_worker_shutdown(worker)
            except Exception:
                log.exception("%s: before_worker_shutdown failed", worker.name)
        if worker.connections is not None:
            worker.connections.close()


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
    ) -> None:
        self.worker = worker
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
                # The tasks it holds but has not started go to other workers.
                log.warning(
                    "%s: %s after %d tasks: replacing it (%d task(s) handed back)",
                    self.worker.name,
                    why,
                    self.done,
                    len(self.local),
                )
                self._retire("memory")
                break
        beat[STATE] = STOPPING
        if not self.orphaned:
            self.flush()

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
        try:
            while self.tasks_in.poll(0):
                kind, body = channel.receive(self.tasks_in)
                if kind == channel.TASKS:
                    self.local.extend(body)
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
            self.results.append((task_id, True, tasks.encode_result(result), duration))
        else:
            self.results.append((task_id, False, tasks.encode_error(error), duration))
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


def execute(worker: WorkerContext, info: TaskInfo, payload: bytes, buffers: Sequence[Any]) -> Any:
    """Run one task's payload in this worker."""
    if info.kind == tasks.CALL:
        fn, args, kwargs, _ = tasks.decode_call(payload, buffers)
        return fn(*args, **kwargs)
    connections = worker.connections
    if connections is None:
        raise RuntimeError(f"a {info.kind} task needs a ClickHouse connection")
    retry = worker.settings.get("retry")
    if info.kind == tasks.SUBMIT:
        fn, args, kwargs, shard = tasks.decode_call(payload, buffers)
        info.shard = shard
        return connections.with_connection(
            lambda conn: fn(conn, *args, **kwargs), retry=retry, shard=shard
        )
    if info.kind == tasks.INSERT:
        spec = tasks.decode_insert(payload, buffers)
        info.table, info.rows, info.shard = spec.table, spec.rows, spec.shard
        return insert(worker, connections, spec, retry)
    raise ValueError(f"unknown task kind {info.kind!r}")


def insert(
    worker: WorkerContext, connections: Connections, spec: tasks.InsertSpec, retry: Any = None
) -> InsertResult:
    """Run an insert task: one request, or (with ``spec.split``) a bisection of the rows
    ClickHouse rejects (:func:`chworkers.clickhouse.inserts.run_insert`).

    Each request runs on a leased connection under the worker's retry policy, beats the
    heartbeat first and is timed in ``insert_duration`` when it succeeds.
    """
    names = list(spec.column_names) if spec.column_names is not None else None

    def request(conn: Any, data: Any, token: str) -> Any:
        if spec.form == "raw":
            return conn.raw_insert(
                spec.table,
                data,
                fmt=spec.fmt,
                column_names=names,
                settings=spec.settings,
                deduplication_token=token,
            )
        return conn.insert(
            spec.table,
            data,
            names,
            column_oriented=spec.form == "columns",
            settings=spec.settings,
            deduplication_token=token,
        )

    def send(data: Any, token: str) -> tuple[int, int] | None:
        def attempt(conn: Any) -> Any:
            worker.beat()
            started = time.monotonic()
            summary = request(conn, data, token)
            worker.metrics.observe("insert_duration", time.monotonic() - started, spec.table)
            return summary

        summary = connections.with_connection(attempt, retry=retry, shard=spec.shard)
        reported = getattr(summary, "summary", None)
        if isinstance(reported, dict) and "written_rows" in reported:
            return int(summary.written_rows), int(summary.written_bytes())
        return None

    def partitions(data: bytes) -> tuple[list[str], int]:
        fmt = spec.fmt or ""
        return connections.with_connection(  # type: ignore[no-any-return]
            lambda conn: partition_keys(conn, spec.table, fmt, data, spec.settings),
            retry=retry,
            shard=spec.shard,
        )

    def evolve(data: bytes) -> int:
        policy = spec.evolve
        assert policy is not None
        added = connections.with_connection(
            lambda conn: schema.evolve(conn, spec.table, data, policy),
            retry=retry,
            shard=spec.shard,
        )
        return len(added)

    data: Any = spec.data  # split: bytes, or a view of them (a memory file's)
    if spec.split is not None and not isinstance(data, bytes):
        data = bytes(data)  # cut into records by bytes methods

    return run_insert(
        data,
        spec.token,
        send,
        fmt=spec.fmt,
        budget=spec.split,
        partitions=partitions if spec.split is not None else None,
        evolve=evolve if spec.evolve is not None else None,
    )


class RecordingHooks(PoolHooks):
    """Pool events of a worker, recorded as metric deltas for the supervisor."""

    def __init__(self, worker: WorkerContext) -> None:
        self.metrics = worker.metrics
        self.worker = worker

    def on_acquire(self, wait_seconds: float) -> None:
        self.metrics.observe("pool_acquire_wait", wait_seconds)
        self.worker.beat()  # waiting for a lease is not hanging

    def on_timeout(self, wait_seconds: float) -> None:
        self.metrics.observe("pool_acquire_wait", wait_seconds)
        self.metrics.inc("errors", "pool", "")

    def on_connection_created(self, endpoint: str) -> None:
        self.metrics.inc("pool_created")

    def on_connection_closed(self, endpoint: str, reason: str) -> None:
        self.metrics.inc("pool_closed", reason)

    def on_error(self, kind: str, code: int | None) -> None:
        self.metrics.inc("errors", kind, "" if code is None else str(code))

    def on_retry(self, kind: str, attempt: int, backoff: float) -> None:
        self.metrics.inc("retries", kind)
        self.worker.beat()  # retrying is progress, not a hang

    def on_state(self, in_use: int, idle: int, waiting: int, maximum: int) -> None:
        self.metrics.set("pool_idle", idle)


@dataclass
class PoolConnector:
    """Pre-fork recipe for a worker's ClickHouse pool; called in the worker after start."""

    connection_options: Any
    pool_options: PoolOptions
    lease: Any  # LeaseClient

    def __call__(self, worker: WorkerContext) -> Connections:
        return ConnectionPool(
            self.connection_options,
            self.pool_options,
            lease=self.lease,
            hooks=RecordingHooks(worker),
        )
