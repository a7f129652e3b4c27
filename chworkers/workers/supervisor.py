"""The Supervisor: the public face of the worker processes.

Producers call :meth:`Supervisor.insert`, :meth:`~Supervisor.submit` or
:meth:`~Supervisor.call` from any thread; each encodes its task to bytes in that thread,
puts it on the bounded queue and gets a :class:`concurrent.futures.Future`. The
supervisor's loop (:mod:`chworkers.workers.arbiter`) dispatches tasks to the workers and
resolves the futures; this module holds what happens around a task's outcome (metrics,
dead letters, re-queueing) and the lifecycle: start, drain, stop, scale, reload.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from functools import partial
from types import TracebackType
from typing import Any

import multiprocess
from prometheus_client import CollectorRegistry

from chworkers.clickhouse import native
from chworkers.clickhouse.connection import ConnectionConfig
from chworkers.clickhouse.inserts import SplitBudget
from chworkers.clickhouse.lease import LeaseBroker
from chworkers.clickhouse.pool import PoolOptions
from chworkers.clickhouse.retry import RetryPolicy
from chworkers.errors import (
    ConfigError,
    SupervisorStoppedError,
)
from chworkers.ops.exposition import MetricsEndpoint
from chworkers.ops.health import Health, Level
from chworkers.ops.metrics import Metrics
from chworkers.workers import mainguard, tasks
from chworkers.workers.arbiter import Arbiter, WorkerHandle
from chworkers.workers.context import Connector
from chworkers.workers.control import SupervisorControl, SupervisorStats
from chworkers.workers.middleware import DeadLetterCallback, Middleware
from chworkers.workers.options import SupervisorOptions
from chworkers.workers.outcomes import Outcomes
from chworkers.workers.signals import SignalInbox
from chworkers.workers.taskqueue import TaskQueue
from chworkers.workers.tasks import DeadLetter, Task
from chworkers.workers.worker import PoolConnector

log = logging.getLogger(__name__)

#: Exit status of :meth:`Supervisor.run`.
EXIT_OK = 0
EXIT_WORKER_BOOT = 4


class Supervisor(SupervisorControl):
    """Runs tasks in worker processes that share one bounded ClickHouse connection budget.

    ``clickhouse`` is the connection options (URL, ``ConnectionConfig`` or mapping) that
    every worker's pool is built from after the worker starts; without it only
    :meth:`call` tasks run. ``retry`` is the ``RetryPolicy`` workers apply; ``middleware``
    adds hooks; ``dead_letter`` receives a :class:`DeadLetter` for every task that fails
    for good; ``on_reload`` returns the settings to change on SIGHUP. Other keyword
    arguments are :class:`SupervisorOptions` fields.
    """

    def __init__(
        self,
        clickhouse: Any = None,
        *,
        pool_options: PoolOptions | Mapping[str, Any] | None = None,
        retry: Any = None,
        middleware: Iterable[Middleware] = (),
        dead_letter: Callable[[DeadLetter], None] | None = None,
        on_reload: Callable[[], Mapping[str, Any]] | None = None,
        registry: CollectorRegistry | None = None,
        options: SupervisorOptions | None = None,
        **settings: Any,
    ) -> None:
        self.options = SupervisorOptions.build(settings, base=options)
        self.clickhouse = clickhouse
        self.pool_options = _worker_pool_options(pool_options, retry, self.options.connections)
        self.retry = self.pool_options.retry
        if clickhouse is not None:
            # A bad URL fails here, not in every worker.
            _check_hung_timeout(ConnectionConfig.coerce(clickhouse), self.options)
        self.middleware: list[Middleware] = list(middleware)
        if dead_letter is not None:
            self.middleware.append(DeadLetterCallback(dead_letter))
        self.on_reload = on_reload
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.metrics.queue_capacity.set(self.options.queue_size)
        self.health_checks = Health(self.metrics)
        self.health_checks.add("supervisor", self, Level.FAILING)
        self.queue = TaskQueue(self.options.queue_size, self.options.queue_max_bytes, self._queued)
        self.broker: Any = None
        self.state = "new"
        self.endpoint: MetricsEndpoint | None = None
        self._arbiter: Arbiter | None = None
        self._signals: SignalInbox | None = None
        self._ids = itertools.count(1)
        self._switch_interval: float | None = None
        self._refreshers: list[Callable[[], None]] = []
        self.outcomes = Outcomes(
            self.metrics, self.middleware, self.queue, lambda: self.options, lambda: self.retry
        )

    def __repr__(self) -> str:
        arb = self._arbiter
        workers = len(arb.workers) if arb else 0
        return (
            f"<Supervisor {self.state}: {workers} workers, {len(self.queue)} queued, "
            f"{self.outcomes.outstanding} outstanding>"
        )

    # Lifecycle.

    def start(self) -> Supervisor:
        """Start the workers and the HTTP endpoint; returns once the workers are ready.

        Raises :class:`WorkerBootError` when workers die while starting.
        """
        if self.state != "new":
            raise SupervisorStoppedError(f"a supervisor starts once (this one is {self.state})")
        opts = self.options
        mainguard.refuse_in_bootstrapping_worker(opts.start_method)
        mainguard.check_main_importable(opts.start_method)
        ctx = multiprocess.get_context(opts.start_method)
        if opts.start_method == "forkserver":
            ctx.set_forkserver_preload(["chworkers.workers.worker"])
        try:
            self.broker = self._make_broker(ctx)
            self._arbiter = arbiter = Arbiter(self, ctx)
            if opts.handle_signals:
                self._signals = SignalInbox(partial(arbiter.command, "signal", reply=False))
                self._signals.install()
            if opts.metrics_port is not None:
                self.endpoint = self._serve_metrics()
        except BaseException:
            if self._signals is not None:
                self._signals.restore()
            if self.broker is not None:
                self.broker.close()
            self.state = "failed"
            raise
        if opts.switch_interval is not None:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(opts.switch_interval)
        self.metrics.build_info.info({"version": _version()})
        self.state = "running"
        arbiter.thread.start()
        try:
            arbiter.wait_ready(opts.boot_timeout)
        except BaseException:
            self.stop(graceful=False)
            raise
        return self

    def _queued(self) -> None:
        if self._arbiter is not None:
            self._arbiter.wake()

    def _serve_metrics(self) -> MetricsEndpoint:
        opts = self.options
        observer = self.metrics.http_endpoint("metrics")
        try:
            endpoint = MetricsEndpoint(
                self.registry,
                host=opts.metrics_host,
                port=opts.metrics_port or 0,
                limits=opts.metrics_limits,
                refresh=self._refresh,
                healthy=self._healthy,
                ready=self._ready,
                on_refusal=observer.on_refusal,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {opts.metrics_host}:{opts.metrics_port}: {exc}",
                key="metrics_port",
                value=opts.metrics_port,
                expected="a free port on metrics_host (0 picks one)",
            ) from exc
        observer.connections = lambda: endpoint.connections
        self.add_refresh(observer.refresh)
        return endpoint

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(graceful=exc_type is None or issubclass(exc_type, Exception))

    def stop(self, graceful: bool = True, timeout: float | None = None) -> None:
        """Stop accepting tasks, let queued and running ones finish (graceful, within
        ``timeout``, default ``graceful_timeout``), then stop the workers. Tasks left
        unfinished fail with :class:`SupervisorStoppedError`."""
        arbiter = self._arbiter
        if arbiter is None:
            self.state = "stopped"
            return
        if not arbiter.finished.is_set():
            arbiter.command("stop", graceful, timeout, reply=False)
        if threading.current_thread() is arbiter.thread:
            return  # from a future's callback: the loop stops once this callback returns
        self.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the supervisor has stopped (by a signal, ``stop`` or a fatal
        error); False on timeout."""
        arbiter = self._arbiter
        if arbiter is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        # Wake up often: a signal delivered to another thread only runs its (Python)
        # handler once the main thread is between bytecodes, not while blocked in a wait.
        while not arbiter.finished.wait(0.1):
            if deadline is not None and time.monotonic() >= deadline:
                return False
        arbiter.thread.join()
        if self._signals is not None:
            self._signals.restore()
        return True

    def run(self) -> int:
        """Start (when needed) and serve until stopped; returns an exit status."""
        if self.state == "new":
            self.start()
        self.wait()
        return EXIT_WORKER_BOOT if self.error is not None else EXIT_OK

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every task submitted so far has finished; False on timeout."""
        arbiter = self._arbiter
        if arbiter is not None and threading.current_thread() is arbiter.thread:
            raise RuntimeError("drain() from a future's callback would wait for itself")
        return self.outcomes.wait_idle(timeout)

    def scale(self, workers: int) -> None:
        """Change the number of worker processes; surplus ones finish their tasks first."""
        self.reconfigure(workers=workers)

    def reconfigure(self, **changes: Any) -> None:
        """Change reloadable settings at runtime (what SIGHUP applies): ``workers``,
        ``max_connections``, ``retry``, ``queue_size``, timeouts, recycling."""
        self._command("reconfigure", changes)

    def stats(self) -> SupervisorStats:
        if self._arbiter is not None and not self._arbiter.finished.is_set():
            try:
                return self._command("stats", timeout=5.0)  # type: ignore[no-any-return]
            except (TimeoutError, SupervisorStoppedError):
                pass
        return self._stats(None)

    @property
    def metrics_url(self) -> str | None:
        return f"{self.endpoint.url}/metrics" if self.endpoint is not None else None

    # Producing tasks.

    def insert(
        self,
        table: str,
        rows: Any,
        column_names: Sequence[str] | None = None,
        *,
        settings: Mapping[str, Any] | None = None,
        deduplication_token: str | None = None,
        timeout: float | None = None,
    ) -> Future[Any]:
        """Queue an insert of ``rows`` (rows, a mapping of columns, a DataFrame or an Arrow
        table) into ``table``; the future's result is the number of rows written.

        Rows and columns are encoded to ClickHouse Native here, in the caller's thread
        (``native_encoding``; the first insert into a table looks its columns up). The
        deduplication token (derived from the content when not given) is fixed now, so a
        re-run after a worker crash cannot duplicate rows. Blocks while the queue is
        full, or raises :class:`QueueFullError` after ``timeout`` seconds (default: the
        ``queue_timeout`` setting). A malformed batch raises :class:`BatchError`."""
        self._require_clickhouse("insert")
        future: Future[Any] = Future()
        encoder = partial(self._native, table) if self.options.native_encoding else None
        task = tasks.encode_insert(
            next(self._ids),
            future,
            table,
            rows,
            column_names,
            settings,
            deduplication_token,
            native=encoder,
        )
        self._put(task, self.options.queue_timeout if timeout is None else timeout)
        return future

    def _native(
        self, table: str, form: str, names: tuple[str, ...] | None, data: Any
    ) -> tuple[bytes, Sequence[str]] | None:
        schema = self.outcomes.schemas.get(table, names)
        arbiter = self._arbiter
        if schema is None and arbiter is not None and threading.current_thread() is arbiter.thread:
            return None  # called from a future's callback: waiting here would block the loop
        if schema is None:
            future: Future[Any] = Future()
            lookup = tasks.encode_call(
                next(self._ids), future, tasks.SUBMIT, native.describe, (table, names), {}
            )
            lookup.internal = True
            try:
                self._put(lookup, self.options.queue_timeout)
                schema = future.result(self.options.boot_timeout)
            except Exception as exc:  # e.g. no such table: the insert itself will say so
                log.debug("no Native encoding for %s: %s", table, exc)
                return None
            self.outcomes.schemas.put(table, names, schema)
        # Named columns: normalize has checked every row's width against them.
        body = native.encode(schema, data, form == "columns", widths_checked=names is not None)
        return None if body is None else (body, schema.column_names)

    def insert_raw(
        self,
        table: str,
        data: bytes,
        fmt: str,
        *,
        rows: int | None = None,
        column_names: Sequence[str] | None = None,
        settings: Mapping[str, Any] | None = None,
        deduplication_token: str | None = None,
        timeout: float | None = None,
        split_bad_rows: bool = False,
    ) -> Future[Any]:
        """Queue an insert of ``data``, bytes already in ClickHouse format ``fmt``
        (``Native``, ``JSONEachRow``, ``CSV``...), sent as they are: a replay with the
        same token is byte-identical. ``rows`` (when known) counts the rows when the
        server reports none. The future's result is the number of rows written.

        With ``split_bad_rows`` (line formats: JSONEachRow, CSV, TSV and their
        ``*WithNames``), rows ClickHouse rejects for their data are bisected out in the
        worker, within ``split_max_requests`` and ``split_max_seconds``, and the rest is
        inserted; the future's result is then an :class:`~chworkers.clickhouse.inserts.InsertResult`
        whose ``rejected`` holds the records left out and why."""
        self._require_clickhouse("insert_raw")
        future: Future[Any] = Future()
        budget = None
        if split_bad_rows:
            budget = SplitBudget(self.options.split_max_requests, self.options.split_max_seconds)
        task = tasks.encode_insert(
            next(self._ids),
            future,
            table,
            data,
            column_names,
            settings,
            deduplication_token,
            fmt=fmt,
            rows=rows,
            split=budget,
        )
        self._put(task, self.options.queue_timeout if timeout is None else timeout)
        return future

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(conn, *args, **kwargs)`` in a worker with a leased connection, retried
        per the retry policy. ``fn`` may be a lambda or a closure."""
        self._require_clickhouse("submit")
        future: Future[Any] = Future()
        task = tasks.encode_call(next(self._ids), future, tasks.SUBMIT, fn, args, kwargs)
        self._put(task, self.options.queue_timeout)
        return future

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker, without a connection."""
        future: Future[Any] = Future()
        task = tasks.encode_call(next(self._ids), future, tasks.CALL, fn, args, kwargs)
        self._put(task, self.options.queue_timeout)
        return future

    def _require_clickhouse(self, what: str) -> None:
        if self.clickhouse is None:
            raise ConfigError(
                f"{what}() needs ClickHouse: give Supervisor(clickhouse=URL)",
                key="clickhouse",
                value=None,
                expected="a ClickHouse URL",
            )

    def _put(self, task: Task, timeout: float | None) -> None:
        if self.state != "running":
            raise SupervisorStoppedError(
                f"the supervisor is {self.state}: start() it (or use it in a with block) first"
            )
        self.outcomes.admit()
        try:
            self.queue.put(task, timeout)
        except BaseException:
            self.outcomes.withdraw()
            raise

    def _worker_exited(self, h: WorkerHandle, reason: str) -> None:
        replaced = self._arbiter is not None and self._arbiter.mode is None
        self.outcomes.worker_exited(h.name, h.pid, reason, replaced=replaced)

    def _loop_exited(self) -> None:
        self.state = "failed" if self.error is not None else "stopped"
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
        if self.endpoint is not None:
            self.endpoint.close()
        if self.broker is not None:
            self.broker.close()
        for middleware in self.middleware:
            try:
                middleware.after_supervisor_stop()
            except Exception:
                log.exception("middleware %r: after_supervisor_stop failed", middleware)

    # Pieces the pool and the loop plug into.

    def _make_broker(self, ctx: Any) -> LeaseBroker | None:
        if self.clickhouse is None:
            return None
        broker = LeaseBroker(self.options.connections, context=ctx)
        broker.start()
        return broker

    def _connector(self, name: str) -> Connector | None:
        if self.broker is None:
            return None
        return PoolConnector(self.clickhouse, self.pool_options, self.broker.client(name))

    def _command(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        arbiter = self._arbiter
        if arbiter is None or arbiter.finished.is_set():
            raise SupervisorStoppedError(f"the supervisor is {self.state}")
        if threading.current_thread() is arbiter.thread:  # e.g. from a future's callback
            return getattr(self, f"_cmd_{name}")(arbiter, *args)
        future = arbiter.command(name, *args)
        assert future is not None
        return future.result(timeout)


def _check_hung_timeout(config: ConnectionConfig, options: SupervisorOptions) -> None:
    """Warn when one legitimate request may outlast ``hung_timeout``: the worker would
    be killed as hung in the middle of a slow but healthy insert."""
    longest = config.connect_timeout + config.send_receive_timeout
    if options.hung_timeout <= longest:
        log.warning(
            "hung_timeout (%g s) is not above connect_timeout + send_receive_timeout "
            "(%g s): a worker waiting on one slow request would be killed as hung; raise "
            "hung_timeout or lower send_receive_timeout",
            options.hung_timeout,
            longest,
        )


def _worker_pool_options(
    given: PoolOptions | Mapping[str, Any] | None, retry: Any, connections: int
) -> PoolOptions:
    """Each worker's pool: the supervisor's connection budget, the retry policy.

    Worker pools open connections only when a task needs one, under a lease: a pool
    minimum would open connections (a request each) at boot without one, and all
    workers together must stay within ``max_connections`` requests in flight.
    """
    options = PoolOptions.coerce(given)
    if isinstance(given, Mapping):
        for key, why in (
            ("max_connections", "is the supervisor's budget: give Supervisor(max_connections=N)"),
            ("min_connections", "must be 0: workers open connections under a lease, on demand"),
        ):
            if given.get(key):
                raise ConfigError(
                    f"pool_options: {key} {why}",
                    key=f"pool_options.{key}",
                    value=given[key],
                    expected="not set",
                )
    policy = RetryPolicy.coerce(retry) if retry is not None else options.retry
    return dataclasses.replace(
        options, max_connections=connections, min_connections=0, retry=policy
    )


def _version() -> str:
    from chworkers._version import __version__

    return __version__
