"""``chworkers run``: sources -> batches -> spool -> workers -> ClickHouse, exactly once.

The daemon wires the pieces together and owns the process's signals (its start-up is
:mod:`chworkers.daemon.daemonstart`'s, its batch handlers :mod:`chworkers.daemon.batchflow`'s,
SIGHUP and SIGUSR2 :mod:`chworkers.daemon.daemonreload`'s, its health and status
:mod:`chworkers.daemon.daemonhealth`'s, the parts they share are declared in
:mod:`chworkers.daemon.daemonparts`):

* the intake (:mod:`chworkers.daemon.intake`: sources and the push endpoint) frames
  records and hands them to the :class:`~chworkers.daemon.batcher.Batcher`;
* a cut batch is written to the :class:`~chworkers.daemon.spool.Spool` (fsync'd) before anyone
  is told it was accepted, and its source position is checkpointed right after;
* the :class:`~chworkers.daemon.dispatch.Dispatcher` feeds spooled batches to the
  :class:`~chworkers.workers.supervisor.Supervisor`'s workers, which insert them with their
  fixed deduplication tokens (rejected rows are bisected out to the dead-letter
  directory); only a confirmed batch leaves the spool.

SIGTERM/SIGINT: stop intake, flush batches to the spool, finish inserts within
``graceful_timeout``; whatever is left stays in the spool for the next start. A second
signal stops at once. SIGHUP re-reads the config and applies what can change at runtime.
SIGUSR2 replaces the workers one at a time while ingest goes on (a rolling restart).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, BinaryIO

from chworkers import vectorscan
from chworkers.clickhouse.cluster import Cluster
from chworkers.daemon.brokergroups import BrokerGroups
from chworkers.daemon.config import Config, ignored_sharding_keys
from chworkers.daemon.daemonhealth import DaemonHealth
from chworkers.daemon.daemonreload import DaemonReload
from chworkers.daemon.ingest import IngestServer
from chworkers.daemon.shardstats import ShardStats
from chworkers.daemon.statelock import state_lock
from chworkers.daemon.totals import Totals
from chworkers.errors import WorkerBootError
from chworkers.ops.health import Level, Report, Stall
from chworkers.ops.systemd import Notifier
from chworkers.ops.watchdog import Heartbeat, Watchdog
from chworkers.wording import plural

if TYPE_CHECKING:
    from chworkers.daemon.splitter import Splitter
    from chworkers.embedded.keeper import Keeper

log = logging.getLogger(__name__)

#: Exit codes of ``chworkers run`` (see the README).
EXIT_OK = 0
EXIT_FAILURE = 1

#: At a stop, push requests settled by the batcher get this long to be answered.
ANSWER_WAIT = 5.0


class Daemon(DaemonReload, DaemonHealth):
    """One ``chworkers run``. Build it from a :class:`Config`, then call :meth:`run`."""

    def __init__(
        self,
        config: Config,
        *,
        stdin: BinaryIO | None = None,
        progress: IO[str] | None = None,
    ) -> None:
        self.config = config
        self.stdin = stdin
        self.progress = progress
        self.totals = Totals()
        self.state_dir = config.state_dir
        self.metrics_url: str | None = None
        self.ingest_url: str | None = None
        self.clickhouse_url: str | None = None
        ch = config.settings.clickhouse
        #: The sharded cluster ClickHouse is (None: one ClickHouse, maybe with replicas).
        self.cluster: Cluster | None = ch.cluster() if ch.shards else None
        self.splitter: Splitter | None = None
        self.broker_groups = BrokerGroups()
        self.shard_stats: ShardStats | None = None
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stop_again = False  # a second SIGTERM/SIGINT came while stopping
        self._started_config = config  # what SIGHUP cannot change is compared with it
        self.ingest: IngestServer | None = None
        self._report = Report(Level.OK)
        self._stall = Stall(config.settings.health.stall, self._backlog)
        self.embedded: Keeper | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        #: Pipelines with schema = "evolve", by name: their batches add missing columns.
        self._evolve = {p.name: p.evolve for p in config.pipelines if p.evolve is not None}
        self._replays: set[int] = set()
        self._keyed: dict[str, int] = {}
        self._lettered: dict[int, None] = {}
        self._counted: dict[int, None] = {}
        self._heartbeat = Heartbeat()
        #: Called with the daemon after the last batch is in, before ClickHouse (if
        #: embedded) stops: the demo queries the result here.
        self.before_stop: Callable[[Daemon], None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def run(self) -> int:
        """Run until the sources are done (finite pipelines) or a signal says stop."""
        with contextlib.ExitStack() as stack:
            # First: a SIGTERM while starting (systemd's stop, a deploy) is queued for the
            # loop, which then drains, instead of killing the daemon halfway up.
            self._install_signals(stack)
            for warning in ignored_sharding_keys(self.config):
                log.warning("%s", warning)
            stack.enter_context(self._state_lock())
            notifier = Notifier.from_environ()
            stack.callback(notifier.close)
            # Nothing here waits for ClickHouse: the spool and the intake open at once,
            # the embedded child and the tables come up in the background (batches for a
            # table wait for it in the spool), and an outage at start costs no data.
            url = self._start_clickhouse(stack)
            self._start_supervisor(stack, url)
            self._start_pipeline_machinery(stack)
            self._start_tables(stack)
            self._replay()
            self._start_intake(stack)
            self._watch_health()
            watchdog = Watchdog(notifier, self._healthy)
            watchdog.start()
            stack.callback(watchdog.stop)
            # READY=1 waits up to startup_wait for the tables (and the embedded child)
            # when ClickHouse answers slowly (the intake is open meanwhile); past it the
            # daemon is ready anyway and the tables come later. A signal cuts the wait
            # short (then the tables are merely not ready yet): only a wait that ran out
            # says ClickHouse is not reachable.
            waited = self._wait_for_tables(self.config.settings.clickhouse.startup_wait)
            if not waited and self._boot_error() is None and self._signals.empty():
                self._warn_tables_missing()
            self._stop_if_workers_failed(notifier)
            self._report = self.supervisor.health_checks.watch()
            notifier.ready(self._status())
            self.totals.started = time.monotonic()  # rates count from here, not start-up
            self._ready.set()
            # Ready: now numpy may be imported (0.15 s of CPU), to count records faster.
            vectorscan.load_in_background()
            log.info(
                "chworkers running: %s, ClickHouse %s, metrics %s%s",
                plural(len(self.config.pipelines), "pipeline"),
                self.clickhouse_url,
                self.metrics_url or "off",
                f", ingest {self.ingest_url}/ingest/<table>" if self.ingest_url else "",
            )
            code = self._loop(notifier)
            notifier.stopping("stopping")  # again after a finished run; harmless if repeated
            if self.before_stop is not None:
                self.before_stop(self)
        return code

    def _warn_tables_missing(self) -> None:
        """Start-up went on without some tables: say why (an outage, or ClickHouse
        refusing a pipeline's ``create``, which waiting does not fix)."""
        refused = self.tables.refused()
        for table, error in sorted(refused.items()):
            log.error(
                "ClickHouse refuses to create table %s (its batches wait in the spool; "
                "fix the pipeline's create or engine and restart): %s",
                table,
                error,
            )
        unreachable = [table for table in self.tables.pending() if table not in refused]
        if unreachable:
            log.warning(
                "ClickHouse is not reachable yet: taking data in and spooling it; tables "
                "%s are created once it is (batches for them wait in the spool)",
                ", ".join(unreachable),
            )

    def _wait_for_tables(self, timeout: float) -> bool:
        """Up to ``timeout`` for the embedded child and the tables; a signal (queued for
        the loop) cuts it short, so a stop during start-up is not delayed."""
        deadline = time.monotonic() + timeout
        while self._signals.empty() and time.monotonic() < deadline and not self._boot_error():
            up = self.embedded is None or self.embedded.wait_up(0)
            if up and self.tables.wait(0.2):
                return True
            if not up:
                time.sleep(0.2)
        return not self.tables.pending()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def request_stop(self) -> None:
        """Ask the loop to stop as SIGTERM would (thread-safe)."""
        self._signals.put(signal.SIGTERM)

    def request_reload(self) -> None:
        """Ask the loop to read the config file again as SIGHUP would (thread-safe)."""
        self._signals.put(signal.SIGHUP)

    def request_restart_workers(self) -> None:
        """Ask the loop to replace the workers one at a time as SIGUSR2 would
        (thread-safe)."""
        self._signals.put(signal.SIGUSR2)

    def _state_lock(self) -> contextlib.AbstractContextManager[None]:
        return state_lock(self.state_dir)

    def _boot_error(self) -> WorkerBootError | None:
        """The supervisor's reason for giving up when its workers cannot start (they
        die while starting, ``max_boot_failures`` in a row): no restart can fix it."""
        error = self.supervisor.error
        return error if isinstance(error, WorkerBootError) else None

    def _stop_if_workers_failed(self, notifier: Notifier) -> None:
        """Stop as for SIGTERM but without waiting for inserts, and raise the boot error
        (``chworkers run`` exits 4) when the workers cannot start: what was accepted stays
        spooled for the next start."""
        error = self._boot_error()
        if error is None:
            return
        log.error("%s; stopping: what was accepted stays in the spool", error)
        notifier.stopping("stopping: worker processes cannot start")
        self._shutdown(drain=False)  # raises the error

    def _install_signals(self, stack: contextlib.ExitStack) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded in a program that owns its signals: use request_stop()

        def handler(signum: int, frame: object) -> None:
            self._signals.put(signum)  # only enqueue; the loop acts

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            previous = signal.signal(signum, handler)
            stack.callback(signal.signal, signum, previous)

    # -- the loop --------------------------------------------------------------------

    def _loop(self, notifier: Notifier) -> int:
        last_status = 0.0
        while True:
            self._heartbeat.beat()
            try:
                signum = self._signals.get(timeout=0.5)
            except queue.Empty:
                signum = None
            if signum == signal.SIGHUP:
                notifier.reloading()
                self._reload()
                notifier.ready(self._status())
            elif signum == signal.SIGUSR2:
                self._restart_workers()
            elif signum is not None:
                log.info("received %s: stopping intake and draining", signal.Signals(signum).name)
                notifier.stopping("draining: intake stopped, finishing inserts")
                return self._shutdown()
            elif self.intake.finite and not self.intake.reading():
                return self._shutdown(finished=True)
            self._stop_if_workers_failed(notifier)
            now = time.monotonic()
            if now - last_status >= 1.0:
                last_status = now
                self.checkpoints.save_unsaved()
                self._check_parts()
                self._report = self.supervisor.health_checks.watch()
                status = self._status()
                notifier.status(status)
                if self.progress is not None:
                    self.progress.write("\r\x1b[2K" + status)
                    self.progress.flush()

    def _shutdown(self, *, finished: bool = False, drain: bool = True) -> int:
        # Bounded whatever the spool and ClickHouse do: sources, the batcher's flush and
        # the drain share graceful_timeout. A source blocked on a full or failing spool
        # is released when the batcher gives up; what was not spooled by then was never
        # acknowledged (HTTP clients got no 202; files are read again from their
        # checkpoint at the next start).
        self._stopping.set()  # /readyz: 503 from here on
        timeout = None if finished else self.config.settings.supervisor.graceful_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        if deadline is not None:
            self.batcher.give_up_at(deadline)
        self.intake.stop(deadline)
        if not self.batcher.close(_remaining(deadline)):
            log.warning("some records were not spooled before the stop (see above)")
        self.intake.wait_answered(ANSWER_WAIT)  # each request hears its 202 or 503
        self.checkpoints.save_unsaved()  # a last try for positions whose save failed
        self.checkpoints.close()  # the snapshot alone holds them all (an upgrade back reads it)
        if drain:
            self._drain(_remaining(deadline), finished=finished)
        self.dispatcher.stop()
        # Batches by reference left would need their files unchanged until the next
        # start: copied while there is time (a second signal stops that too).
        self.spool.copy_references(stop=self._stop_signalled)
        if self.progress is not None:
            self.progress.write("\r\x1b[2K")
        stats = self.spool.stats()
        left, in_memory = int(stats["batches"] - stats["memory_batches"]), stats["memory_batches"]
        if left:
            log.warning(
                "stopping with %s left in the spool; they go first next start",
                plural(left, "batch"),
            )
        if in_memory:
            log.warning(
                "stopping with %s not inserted: their entries stay pending in "
                "the broker, and are rebuilt from their manifests at the next start (or by "
                "another daemon after claim_idle)",
                plural(int(in_memory), "broker batch", "broker batches"),
            )
        error = self._boot_error()
        if error is not None:
            raise error  # `chworkers run` exits 4: restarting cannot help
        return EXIT_OK

    def _drain(self, timeout: float | None, *, finished: bool = False) -> bool:
        """Until every batch is in (True), ``timeout`` passes or a signal says stop;
        ``finished``: the sources ran out, no signal asked for this stop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._heartbeat.beat()  # draining is this loop's work, not a hang
            if self._boot_error() is not None:
                return False  # no worker will insert what is left: it stays spooled
            step = 0.5 if remaining is None else min(0.5, remaining)
            # Held batches first: no batch is spooled any more, so once none waits to be
            # split by shard nor for its table, they are all with the dispatcher, and its
            # being idle means they are in.
            if self.splitter is not None and self.splitter.waiting():
                self.splitter.wait_split(step)
            elif self.tables.held():
                self.tables.wait(step)
            elif self.dispatcher.wait_idle(step):
                return True
            with contextlib.suppress(queue.Empty):
                signum = self._signals.get_nowait()
                if signum in (signal.SIGTERM, signal.SIGINT):
                    # After the sources ran out this is the first signal, not a second one.
                    log.warning(
                        "%s: stopping now; unfinished batches stay spooled",
                        f"received {signal.Signals(signum).name} while waiting for the last inserts"
                        if finished
                        else "second signal",
                    )
                    return False

    def _stop_signalled(self) -> bool:
        """Whether SIGTERM or SIGINT came while stopping (a second signal: stop at
        once). Others (SIGHUP: logrotate's ``systemctl reload``; SIGUSR2) are taken and
        ignored: they must not cut the stop's work short."""
        while True:
            try:
                signum = self._signals.get_nowait()
            except queue.Empty:
                return self._stop_again
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._stop_again = True
            else:
                log.info("received %s while stopping: ignored", signal.Signals(signum).name)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
