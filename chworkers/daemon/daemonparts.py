"""What a running daemon is made of: its parts, declared once with their types.

:class:`~chworkers.daemon.service.Daemon` builds these (its start-up,
:class:`~chworkers.daemon.daemonstart.DaemonStart`) and its batch handlers
(:class:`~chworkers.daemon.batchflow.BatchFlow`), its reloads
(:class:`~chworkers.daemon.daemonreload.DaemonReload`) and its health
(:class:`~chworkers.daemon.daemonhealth.DaemonHealth`) use them; this class only says
what each is, so that the modules the daemon is cut into agree on it. The parts made
at start (from ``supervisor`` on) do not exist before it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from chworkers.clickhouse.cluster import Cluster
    from chworkers.clickhouse.schema import Evolve
    from chworkers.daemon.batcher import Batcher
    from chworkers.daemon.brokergroups import BrokerGroups
    from chworkers.daemon.checkpoints import Checkpoints
    from chworkers.daemon.config import Config
    from chworkers.daemon.deadletter import DeadLetters
    from chworkers.daemon.dispatch import Dispatcher
    from chworkers.daemon.epochcheck import EpochCheck
    from chworkers.daemon.ingest import IngestServer
    from chworkers.daemon.intake import Intake
    from chworkers.daemon.partspressure import PartsPressure
    from chworkers.daemon.shardstats import ShardStats
    from chworkers.daemon.splitter import Splitter
    from chworkers.daemon.spool import Spool
    from chworkers.daemon.tables import ShardTables, Tables
    from chworkers.daemon.totals import Totals
    from chworkers.embedded.keeper import Keeper
    from chworkers.ops.health import Report, Stall
    from chworkers.ops.metrics import Metrics
    from chworkers.ops.watchdog import Heartbeat
    from chworkers.workers.supervisor import Supervisor

__all__ = ["DaemonParts"]


class DaemonParts:
    """The daemon's parts (see the module's docstring)."""

    # Made with the daemon.
    config: Config
    stdin: BinaryIO | None
    totals: Totals
    state_dir: Path
    #: The sharded cluster ClickHouse is (None: one ClickHouse, maybe with replicas).
    cluster: Cluster | None
    clickhouse_url: str | None
    metrics_url: str | None
    ingest_url: str | None
    embedded: Keeper | None
    splitter: Splitter | None
    #: Broker batches split by shard: acknowledged once every part is confirmed.
    broker_groups: BrokerGroups
    shard_stats: ShardStats | None
    ingest: IngestServer | None
    _ready: threading.Event
    _stopping: threading.Event
    _lock: threading.Lock
    _stall: Stall
    #: Pipelines with schema = "evolve", by name: their batches add missing columns.
    _evolve: dict[str, Evolve]
    #: Batches (by seq) recovered from the spool at start: an earlier run may have
    #: inserted and counted them. Their rows are replays.
    _replays: set[int]
    #: Tokens of keyed pushes (Idempotency-Key) sent this run -> the batch that first
    #: carried each: another batch with one is the same request sent again.
    _keyed: dict[str, int]
    #: Batches (by seq, the last LETTERED_KEPT) whose rejected rows are in the dead
    #: letters: confirmed again (its completion failed after they were written, so it
    #: was inserted again), a batch does not write them again.
    _lettered: dict[int, None]
    #: Batches (by seq, the last LETTERED_KEPT) whose rows were counted: completed again
    #: (its file's removal failed, so it was inserted again), a batch is a replay.
    _counted: dict[int, None]
    #: The configuration the daemon started with: what SIGHUP cannot change is
    #: compared with it.
    _started_config: Config
    #: The daemon's loop beats it every turn (its health: the loop is not stuck).
    _heartbeat: Heartbeat
    #: The health report of the last check (the STATUS= line leads with it).
    _report: Report

    # Made at start, in this order.
    supervisor: Supervisor
    metrics: Metrics
    spool: Spool
    checkpoints: Checkpoints
    dead_letters: DeadLetters
    parts: PartsPressure
    #: Batches checked for epoch numbers ahead of their worker.
    epoch_check: EpochCheck
    dispatcher: Dispatcher
    batcher: Batcher
    tables: Tables | ShardTables
    intake: Intake
