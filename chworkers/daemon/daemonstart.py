"""The daemon's start-up: ClickHouse, the supervisor, the spool and its machinery, the
tables, the replay of the spool, the intake.

:class:`DaemonStart` builds the :class:`~chworkers.daemon.service.Daemon`'s parts, in
the order :meth:`~chworkers.daemon.service.Daemon.run` calls these methods; each
registers what undoes it on the run's exit stack. Nothing here waits for ClickHouse.
"""

from __future__ import annotations

import contextlib
import logging

from chworkers.daemon.batcher import Batcher
from chworkers.daemon.batchflow import BatchFlow
from chworkers.daemon.brokers.wiring import broker_source
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.clickhousesettings import EMBEDDED
from chworkers.daemon.deadletter import DeadLetters
from chworkers.daemon.dispatch import Dispatcher
from chworkers.daemon.embeddedchild import once_serving, start_embedded
from chworkers.daemon.epochcheck import EpochCheck
from chworkers.daemon.intake import Intake
from chworkers.daemon.partspressure import PartsPressure
from chworkers.daemon.pipelinelist import table_limits
from chworkers.daemon.shardstats import ShardStats
from chworkers.daemon.shardtarget import columns_reader, shard_tables
from chworkers.daemon.spool import Spool
from chworkers.daemon.tables import Tables
from chworkers.daemon.wholebatch import file_letter
from chworkers.daemon.workertasks import create_table, timestamp_columns
from chworkers.wording import plural
from chworkers.workers.supervisor import Supervisor

__all__ = ["DaemonStart"]

#: The daemon's logger, as before it was cut into modules (log filters keep working).
log = logging.getLogger("chworkers.daemon.service")


class DaemonStart(BatchFlow):
    """The daemon's start-up steps (see the module's docstring)."""

    def _start_clickhouse(self, stack: contextlib.ExitStack) -> str | None:
        ch = self.config.settings.clickhouse
        if self.cluster is not None:
            self.clickhouse_url = str(self.cluster)
            return None
        if ch.url != EMBEDDED:
            self.clickhouse_url = ch.connection().url
            return None
        self.embedded = start_embedded(ch, self.state_dir, self.config.settings.log)
        stack.callback(self.embedded.stop)
        self.clickhouse_url = self.embedded.endpoint.url
        return self.clickhouse_url

    def _start_supervisor(self, stack: contextlib.ExitStack, url: str | None) -> None:
        s = self.config.settings
        self.supervisor = Supervisor(
            s.clickhouse.connection(url),
            shards=self.cluster,
            pool_options=s.clickhouse.pool,
            options=s.supervisor,
            max_connections=s.clickhouse.pool.max_connections,
            metrics_host=s.metrics.host,
            metrics_port=s.metrics.port,
            metrics_limits=s.metrics.limits,
            handle_signals=False,  # the daemon owns signals: it stops intake first
            table_limits=table_limits(self.config.pipelines),
        )
        # The workers boot (the fork server's imports, their pools) while this thread
        # opens the spool and the sources: accepting data needs no worker, and batches
        # wait in the spool and the queue until one is ready. /readyz follows the daemon.
        self.supervisor.ready_when(self._readiness)
        self.supervisor.start(wait=False)
        stack.callback(self._stop_supervisor)
        self.metrics = self.supervisor.metrics
        self.metrics_url = self.supervisor.metrics_url
        if self.embedded is not None:
            self.embedded.attach_metrics(self.metrics)

    def _readiness(self) -> str | None:
        """What ``/readyz`` says besides the supervisor's health: ready from READY=1
        (the intake open) until the stop begins (the intake closing)."""
        if self._stopping.is_set():
            return "stopping: the intake is closed"
        return None if self._ready.is_set() else "starting"

    def _stop_supervisor(self) -> None:
        self.supervisor.stop(graceful=True, timeout=5)

    def _start_pipeline_machinery(self, stack: contextlib.ExitStack) -> None:
        s = self.config.settings
        self.spool = Spool(self.state_dir / "spool", s.spool, metrics=self.metrics)
        stack.callback(self.spool.close)
        self.supervisor.add_refresh(self.spool.publish)  # its age grows with no event
        self.checkpoints = Checkpoints(self.state_dir / "positions")
        self.dead_letters = DeadLetters(self.state_dir / "dead-letter", metrics=self.metrics)
        self.dead_letters.ready()  # one that cannot be written stops the start (exit 3)
        self.dead_letters.on_rows = self._dead_lettered
        self.parts = PartsPressure(s.parts, metrics=self.metrics)
        self.epoch_check = EpochCheck(
            lambda table: self.supervisor.submit(timestamp_columns, table)
        )
        self.dispatcher = Dispatcher(
            self.spool,
            self._submit,
            s.spool,
            workers=s.supervisor.worker_bounds[1],  # the most it may autoscale to
            shards=1 if self.cluster is None else len(self.cluster),
            on_done=self._confirmed,
            on_failure=self._failed,
            is_permanent=self._is_permanent,
            throttle=self.parts,
        )
        self.batcher = Batcher(
            self.spool, self._spooled, metrics=self.metrics, adjust=self.parts.limits
        )
        for p in self.config.pipelines:  # series exist at 0 before the first event
            self.metrics.source_rows.labels(source=p.name)
            self.metrics.source_errors.labels(source=p.name)
            self.metrics.dead_letter_rows.labels(table=p.table)
            self.parts.watch(p.table)

    def _start_tables(self, stack: contextlib.ExitStack) -> None:
        statements = {
            p.table: statement
            for p in self.config.pipelines
            if (statement := p.create_statement()) is not None
        }
        if self.cluster is None:
            self.tables = Tables(
                statements,
                lambda statement: self.supervisor.submit(create_table, statement),
                self.dispatcher.add,
                # Batches held for a table wait: those by reference are copied.
                on_failure=self.spool.in_trouble,
            )
        else:
            self.tables = shard_tables(
                statements, self.supervisor, len(self.cluster), self.dispatcher.add
            )
        once_serving(self.embedded, self.tables.start)
        stack.callback(self.tables.stop)
        if self.cluster is not None:
            # Here, not at the top: splitting by key brings numpy, which a daemon
            # without shards does not load (its start-up, docs/daemon.md).
            from chworkers.daemon.splitter import Splitter

            self.splitter = Splitter(
                self.config.pipelines,
                self.cluster,
                self.spool,
                self.tables.offer,
                columns_reader(self.supervisor, len(self.cluster)),
                dead_letters=self.dead_letters,
                on_split=self.broker_groups.split,
            )
            self.splitter.start()
            stack.callback(self.splitter.stop)
            self.shard_stats = ShardStats(
                self.cluster,
                self.dispatcher.shard_backlog,
                scheme="https" if self.cluster.secure else "http",
                metrics=self.metrics,
            )
            self.shard_stats.start()
            stack.callback(self.shard_stats.stop)
            self.supervisor.add_refresh(self._publish_shards)

    def _replay(self) -> None:
        batches = self.spool.recover()
        self.checkpoints.recover(batches)
        with self._lock:  # sent before the restart, maybe: replays
            self._replays.update(batch.seq for batch in batches)
        for batch in batches:
            self._offer(batch)
        once_serving(self.embedded, self.dispatcher.start)
        if batches:
            log.info(
                "replaying %s from the last run",
                plural(len(batches), "spooled batch", "spooled batches"),
            )

    def _start_intake(self, stack: contextlib.ExitStack) -> None:
        self.intake = Intake(
            self.config.pipelines,
            self.batcher,
            self.checkpoints,
            make_broker=lambda p, common: broker_source(
                p,
                common,
                state_dir=self.state_dir,
                dead_letters=self.dead_letters,
                metrics=self.metrics,
                # Split batches that wait only for a shard that is down do not hold the
                # source back: the other shards go on (docs/sharding.md).
                in_flight=lambda: (
                    self.dispatcher.max_in_flight + self.broker_groups.held_back(p.name)
                ),
            ),
            http=self.config.settings.http,
            metrics=self.metrics,
            stdin=self.stdin,
            on_rows=self._read,
            bad_file=file_letter(self.dead_letters),
        )
        # Unwound after the dispatcher stopped: no broker batch completes any more.
        stack.callback(self.intake.close)
        for source in self.intake.sources:
            self.supervisor.health_checks.add(f"source {source.name}", source)  # its problems()
        self.supervisor.add_refresh(self.intake.refresh)
        self.intake.start()
        if self.intake.ingest is not None:
            self.ingest = self.intake.ingest
            self.ingest_url = self.ingest.url
            stack.callback(self.ingest.stop)
