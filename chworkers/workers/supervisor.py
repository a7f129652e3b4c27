"""The Supervisor: the public face of the worker processes.

Producers call :meth:`Supervisor.insert`, :meth:`~Supervisor.submit` or
:meth:`~Supervisor.call` from any thread (those methods are
:class:`~chworkers.workers.producing.Producing`'s); each encodes its task to bytes in that thread,
puts it on the bounded queue and gets a :class:`concurrent.futures.Future`. Everything
else the supervisor has (settings, queue, workers, outcomes) belongs to its owner, the
:class:`~chworkers.workers.arbiter.Arbiter`, whose loop dispatches tasks and resolves
the futures; the lifecycle methods here (start, stop, drain, scale, reconfigure, stats)
send it typed commands (:mod:`chworkers.workers.commands`) or wait for it. How it is
watched (health, the metrics endpoint, readiness) is
:class:`~chworkers.workers.observing.Observing`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import TYPE_CHECKING, Any

import multiprocess
from prometheus_client import CollectorRegistry

from chworkers import timeouts
from chworkers._version import __version__
from chworkers.clickhouse.cluster import Cluster
from chworkers.clickhouse.columnar import arrow_compression
from chworkers.clickhouse.dsn import ConnectionConfig
from chworkers.clickhouse.lease import LeaseBroker
from chworkers.clickhouse.pooloptions import PoolOptions
from chworkers.clickhouse.retry import RetryPolicy
from chworkers.clickhouse.shardleases import ShardLeaseBrokers
from chworkers.errors import ConfigError, SupervisorStoppedError, WaitTimeoutError
from chworkers.ops.exposition import MetricsEndpoint
from chworkers.ops.health import Health, Level
from chworkers.ops.metrics import Metrics
from chworkers.timeouts import DEFAULT, Timeout
from chworkers.workers import forkserver, mainguard
from chworkers.workers.arbiter import Arbiter
from chworkers.workers.commands import (
    Reconfigure,
    RestartWorkers,
    SetTableLimits,
    Signal,
    Stats,
    Stop,
    SupervisorStats,
    SyncLogLevels,
)
from chworkers.workers.context import Connector
from chworkers.workers.deadletter import DeadLetter
from chworkers.workers.middleware import DeadLetterCallback, Middleware
from chworkers.workers.observing import Observing
from chworkers.workers.options import SupervisorOptions, TableLimit
from chworkers.workers.probes import Probes
from chworkers.workers.producer import Producer
from chworkers.workers.producing import Producing
from chworkers.workers.signals import SignalInbox
from chworkers.workers.tablelimits import coerce_limits
from chworkers.workers.workerpool import PoolConnector, check_hung_timeout, worker_pool_options

if TYPE_CHECKING:
    # Sharded inserts bring numpy: imported when the first one is made, so that a
    # program without shards (the daemon at every start) does not load it.
    from chworkers.workers.shardinsert import ShardedInserts

log = logging.getLogger(__name__)

#: Exit status of :meth:`Supervisor.run`.
EXIT_OK = 0
EXIT_WORKER_BOOT = 4

#: Where workers' ClickHouse is: a URL, a ConnectionConfig or a mapping of its fields.
ClickHouseTarget = str | ConnectionConfig | Mapping[str, object]


class Supervisor(Producing, Observing):
    """Runs tasks in worker processes that share one bounded ClickHouse connection budget.

    ``clickhouse`` is the connection options (URL, ``ConnectionConfig`` or mapping) that
    every worker's pool is built from after the worker starts; without it only
    :meth:`call` tasks run. ``table_limits`` maps a table (as given to :meth:`insert`)
    to its :class:`TableLimit` (or a mapping of its fields), applied across all
    workers. ``retry`` is the ``RetryPolicy`` (or a mapping of its fields)
    workers apply; ``middleware`` adds hooks; ``dead_letter`` receives a
    :class:`DeadLetter` for every task that fails for good; ``on_reload`` returns the
    settings to change on SIGHUP. Other keyword arguments are :class:`SupervisorOptions`
    fields.

    Over a sharded cluster (``shards=``, or ``shards`` in the connection options;
    docs/sharding.md) every insert and submit names its ``shard``, and each shard has its
    own connection budget of ``max_connections``, lent by its own lease broker.

    The supervisor's state (settings, queue, workers, outcomes) belongs to its
    :class:`~chworkers.workers.arbiter.Arbiter`, whose loop thread alone changes it; the
    methods here put tasks on the queue or send the loop a command.
    """

    def __init__(
        self,
        clickhouse: ClickHouseTarget | None = None,
        *,
        pool_options: PoolOptions | Mapping[str, object] | None = None,
        retry: RetryPolicy | Mapping[str, object] | None = None,
        middleware: Iterable[Middleware] = (),
        dead_letter: Callable[[DeadLetter], None] | None = None,
        on_reload: Callable[[], Mapping[str, object]] | None = None,
        registry: CollectorRegistry | None = None,
        options: SupervisorOptions | None = None,
        table_limits: Mapping[str, TableLimit | Mapping[str, object]] | None = None,
        shards: Cluster | Sequence[object] | Mapping[str, object] | None = None,
        **settings: object,
    ) -> None:
        opts = SupervisorOptions.build(settings, base=options)
        limits = coerce_limits(table_limits)
        if shards is not None:
            base = ConnectionConfig.coerce(clickhouse if clickhouse is not None else {})
            clickhouse = dataclasses.replace(base, shards=Cluster.parse(shards))
        self.clickhouse = clickhouse
        #: The sharded cluster ClickHouse is (None: not sharded).
        self.cluster: Cluster | None = None
        self.pool_options = worker_pool_options(pool_options, retry, opts.connections)
        arrow_codec: str | None = None
        if clickhouse is not None:
            # A bad URL fails here, not in every worker.
            config = ConnectionConfig.coerce(clickhouse)
            check_hung_timeout(config, opts)
            self.cluster = config.shards
            arrow_codec = arrow_compression(config.compress)
        self.middleware: list[Middleware] = list(middleware)
        if dead_letter is not None:
            self.middleware.append(DeadLetterCallback(dead_letter))
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.metrics.queue_capacity.set(opts.queue_size)
        self.health_checks = Health(self.metrics)
        self.endpoint: MetricsEndpoint | None = None
        self._owner = Arbiter(
            opts,
            self.pool_options.retry,
            self.metrics,
            self.middleware,
            connector=self._connector,
            on_reload=on_reload,
            on_exit=self._loop_exited,
            table_limits=limits,
        )
        self._probes = Probes(self._owner, self.metrics, self.health_checks)
        self.health_checks.add("supervisor", self._probes, Level.FAILING)
        self._producer = Producer(
            self._owner,
            clickhouse=clickhouse is not None,
            shards=None if self.cluster is None else len(self.cluster),
            arrow_compression=arrow_codec,
        )
        self._shard_inserts: ShardedInserts | None = None
        self._signals: SignalInbox | None = None
        self._switch_interval: float | None = None

    def __repr__(self) -> str:
        return (
            f"<Supervisor {self.state}: {self._owner.worker_count()} workers, "
            f"{len(self._owner.queue)} queued, {self._owner.outcomes.outstanding} outstanding>"
        )

    # What the owner publishes.

    @property
    def options(self) -> SupervisorOptions:
        """The settings in force (:meth:`reconfigure` replaces them)."""
        return self._owner.options

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy workers apply now."""
        return self._owner.retry

    @property
    def state(self) -> str:
        """new, running, stopped or failed."""
        return self._owner.state

    @property
    def error(self) -> BaseException | None:
        """Why the supervisor gave up, when it did (e.g. :class:`WorkerBootError`)."""
        return self._owner.error

    @property
    def broker(self) -> LeaseBroker | ShardLeaseBrokers | None:
        """The lease broker of the ClickHouse connection budget (once started); of a
        sharded cluster, one per shard."""
        return self._owner.broker

    # Lifecycle.

    def start(self, *, wait: bool = True) -> Supervisor:
        """Start the workers and the HTTP endpoint; returns once the workers are ready.

        Raises :class:`WorkerBootError` when workers die while starting. With
        ``wait=False`` it returns once they are starting: tasks queue until a worker is
        ready, and a boot failure ends the supervisor later (:attr:`error`,
        :attr:`state` ``failed``) instead of raising here.
        """
        if self.state != "new":
            raise SupervisorStoppedError(f"a supervisor starts once (this one is {self.state})")
        opts = self.options
        mainguard.refuse_in_bootstrapping_worker(opts.start_method)
        mainguard.check_main_importable(opts.start_method)
        ctx = multiprocess.get_context(opts.start_method)
        if opts.start_method == "forkserver":
            forkserver.preload(ctx)
        broker = None
        try:
            broker = self._make_broker(ctx)
            if opts.handle_signals:
                owner = self._owner
                self._signals = SignalInbox(lambda signum: owner.tell(Signal(signum)))
                self._signals.install()
            if opts.metrics_port is not None:
                self.endpoint = self._serve_metrics(opts)
        except BaseException:
            if self._signals is not None:
                self._signals.restore()
            if broker is not None:
                broker.close()
            self._owner.abandon("failed")
            raise
        if opts.switch_interval is not None:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(opts.switch_interval)
        self.metrics.build_info.info({"version": __version__})
        self._owner.start(ctx, broker)
        if not wait:
            return self
        try:
            self._owner.wait_ready(opts.boot_timeout)
        except BaseException:
            self.stop(graceful=False)
            raise
        return self

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(graceful=exc_type is None or issubclass(exc_type, Exception))

    def stop(self, graceful: bool = True, timeout: Timeout = DEFAULT) -> None:
        """Stop accepting tasks, let queued and running ones finish (graceful, within
        ``timeout``: by default ``graceful_timeout``, None for no limit), then stop the
        workers. Tasks left unfinished fail with :class:`SupervisorStoppedError`."""
        owner = self._owner
        drain = timeouts.resolve(timeout, owner.options.graceful_timeout)
        if not owner.started:  # never started, or starting failed: nothing runs
            if owner.state == "new":
                owner.abandon("stopped")
            return
        if not owner.finished.is_set():
            owner.tell(Stop(graceful, drain))
        if owner.in_loop():
            return  # from a future's callback: the loop stops once this callback returns
        self.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the supervisor has stopped (by a signal, ``stop`` or a fatal
        error); False on timeout (None: no limit)."""
        owner = self._owner
        if not owner.started:
            return True
        if not owner.join(timeouts.resolve(timeout, None)):
            return False
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
        """Wait until every task submitted so far has finished; False on timeout (None:
        no limit). From a future's callback (the supervisor's loop, which would wait for
        itself) it is a :class:`ConfigError`."""
        limit = timeouts.resolve(timeout, None)
        if self._owner.in_loop():
            raise ConfigError(
                "drain() from a future's callback would wait for itself: call it from "
                "another thread (the callback runs on the supervisor's loop)",
                key="drain",
                expected="a call from outside the supervisor's loop",
            )
        return self._owner.outcomes.wait_idle(limit)

    def scale(self, workers: int) -> None:
        """Change the number of worker processes; surplus ones finish their tasks first."""
        self.reconfigure(workers=workers)

    def reconfigure(self, **changes: object) -> None:
        """Change reloadable settings at runtime (what SIGHUP applies): ``workers``,
        ``max_connections``, ``retry``, ``queue_size``, timeouts, recycling. Raises
        :class:`ConfigError` for a setting that cannot change while running."""
        self._owner.ask(Reconfigure(changes))

    def set_table_limits(
        self, limits: Mapping[str, TableLimit | Mapping[str, object]] | None
    ) -> None:
        """Replace the per-table insert limits while running (tables not named have
        none; inserts running keep their slots)."""
        self._owner.ask(SetTableLimits(coerce_limits(limits)))

    def restart_workers(self, timeout: float | None = None, *, wait: bool = True) -> int:
        """Replace every worker, one at a time: a fresh worker starts and reports ready
        before the old one finishes what it was sent and stops, so capacity does not drop
        and no task is lost (what SIGUSR2 does). Returns how many were replaced, once all
        were (``wait``; within ``timeout`` seconds, None: no limit, else
        :class:`WaitTimeoutError`), or 0 at once without ``wait``. Asked again while one
        runs, it also replaces the workers started since."""
        future = self._owner.ask(RestartWorkers())
        if not wait:
            return 0
        try:
            return future.result(timeouts.resolve(timeout, None))
        except FutureTimeout:
            raise WaitTimeoutError(
                f"the rolling restart did not finish within {timeout} s; it goes on",
                timeout=timeout,
            ) from None

    def stats(self) -> SupervisorStats:
        """A snapshot: workers (pid, state, tasks done), queue, in flight, outcomes,
        restarts and leases."""
        owner = self._owner
        if owner.started and not owner.finished.is_set():
            try:
                return owner.ask(Stats(), timeout=5.0)
            except (TimeoutError, SupervisorStoppedError):
                pass
        return owner.stats()

    def sync_log_levels(self) -> None:
        """Copy this process's log levels into the running workers, after changing them
        (the daemon does on SIGHUP); workers started later copy them when they start."""
        self._owner.ask(SyncLogLevels())

    def _loop_exited(self) -> None:
        """On the loop thread, once it ended."""
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
        if self.endpoint is not None:
            self.endpoint.close()

    # Pieces the pool and the loop plug into.

    def _make_broker(self, ctx: Any) -> LeaseBroker | ShardLeaseBrokers | None:
        if self.clickhouse is None:
            return None
        broker: LeaseBroker | ShardLeaseBrokers
        if self.cluster is not None:
            broker = ShardLeaseBrokers(self.options.connections, len(self.cluster), context=ctx)
        else:
            broker = LeaseBroker(self.options.connections, context=ctx)
        broker.start()
        return broker

    def _connector(self, name: str) -> Connector | None:
        broker = self.broker
        if broker is None:
            return None
        return PoolConnector(self.clickhouse, self.pool_options, broker.client(name))
