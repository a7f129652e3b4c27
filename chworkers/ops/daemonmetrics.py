"""The daemon's instruments: the spool, dead letters, too many parts, sources, the
shards of a sharded cluster and broker sources (part of
:class:`~chworkers.ops.metrics.Metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class DaemonMetrics:
    """The daemon's data path instruments, registered into ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.spool_bytes = Gauge(
            "chworkers_spool_bytes",
            "Bytes of batches waiting in the spool (on disk, and in memory for broker pipelines).",
            registry=r,
        )
        self.spool_memory_bytes = Gauge(
            "chworkers_spool_memory_bytes",
            "Of chworkers_spool_bytes, those of broker pipelines' batches, kept in memory only "
            "(capped by [spool] memory_max_bytes).",
            registry=r,
        )
        self.spool_max_bytes = Gauge(
            "chworkers_spool_max_bytes",
            "Configured cap on the spool's size (0 when there is none).",
            registry=r,
        )
        self.spool_batches = Gauge(
            "chworkers_spool_batches",
            "Batches waiting in the spool (on disk, and in memory for broker pipelines).",
            registry=r,
        )
        self.spool_oldest_age = Gauge(
            "chworkers_spool_oldest_age_seconds",
            "Age of the oldest batch in the spool (0 when empty).",
            registry=r,
        )
        self.spool_quarantined = Counter(
            "chworkers_spool_quarantined_total",
            "Spool files found truncated or corrupt, or batches by reference whose file "
            "was truncated or rewritten in place, moved aside.",
            registry=r,
        )
        self.spool_reference_copies = Counter(
            "chworkers_spool_reference_copies_total",
            "Batches spooled by reference and then copied into the spool, as they had to "
            "wait (an insert attempt failed, ClickHouse in trouble, a stop).",
            registry=r,
        )
        self.spool_dropped = Counter(
            "chworkers_spool_dropped_batches_total",
            "Batches dropped by the drop-oldest spool policy.",
            registry=r,
        )
        self.spool_write_failures = Counter(
            "chworkers_spool_write_failures_total",
            "Batches the spool could not take, by reason: full (its size cap) or io (the "
            "disk: ENOSPC, EIO); file sources wait and retry, HTTP clients get a 503.",
            ["reason"],
            registry=r,
        )
        for reason in ("full", "io"):
            self.spool_write_failures.labels(reason=reason)
        self.spool_waiting_rows = Gauge(
            "chworkers_spool_waiting_rows",
            "Rows cut into batches that the spool has not taken yet because it is full or "
            "failing (their sources wait; 0 when the spool keeps up).",
            registry=r,
        )
        self.dead_letter_rows = Counter(
            "chworkers_dead_letter_rows_total",
            "Rows ClickHouse rejected, written to the dead-letter directory, by table.",
            ["table"],
            registry=r,
        )
        # Too many parts (chworkers.daemon.partspressure), by table.
        self.too_many_parts = Counter(
            "chworkers_too_many_parts_total",
            "Inserts ClickHouse refused with TOO_MANY_PARTS after the retries, by table.",
            ["table"],
            registry=r,
        )
        self.parts_slowdowns = Counter(
            "chworkers_parts_slowdowns_total",
            "Times a table was slowed down (larger batches, one insert at a time) because "
            "its merges fell behind, by table.",
            ["table"],
            registry=r,
        )
        self.parts_factor = Gauge(
            "chworkers_parts_batch_factor",
            "How many times larger a table's batches are cut now (1: normal; more while its "
            "parts are near parts_to_delay_insert), by table.",
            ["table"],
            registry=r,
        )
        self.table_parts = Gauge(
            "chworkers_table_active_parts",
            "Most active parts in one partition of a pipeline's table, by table.",
            ["table"],
            registry=r,
        )
        self.table_parts_delay_at = Gauge(
            "chworkers_table_parts_to_delay_insert",
            "The table's parts_to_delay_insert (ClickHouse delays inserts from there), by table.",
            ["table"],
            registry=r,
        )
        self.source_rows = Counter(
            "chworkers_source_rows_total",
            "Rows read from a source, by source name.",
            ["source"],
            registry=r,
        )
        self.source_errors = Counter(
            "chworkers_source_errors_total",
            "Input a source could not parse or accept, by source name.",
            ["source"],
            registry=r,
        )
        self.source_files = Gauge(
            "chworkers_source_files",
            "Files a file source is reading, by state: open (holding a descriptor) or closed "
            "(a followed file idle for close_idle_after, or waiting for one of its "
            "max_open_files descriptors; reopened where it was when it grows).",
            ["source", "state"],
            registry=r,
        )
        self.source_reopens = Counter(
            "chworkers_source_reopens_total",
            "Followed files a file source reopened, by source name: closed (idle for "
            "close_idle_after, or to make room within max_open_files) and grown since; "
            "each costs an open and a read of the file's first bytes.",
            ["source"],
            registry=r,
        )
        # A sharded cluster ([clickhouse] shards): the daemon's parts, by shard index.
        self.shard_rows = Counter(
            "chworkers_shard_rows_total",
            "Rows ClickHouse wrote into each shard of the cluster (the daemon's per-shard "
            "parts), by shard index (0 is the first of [clickhouse] shards).",
            ["shard"],
            registry=r,
        )
        self.shard_errors = Counter(
            "chworkers_shard_errors_total",
            "Attempts to insert a part into a shard that failed (it stays spooled and is "
            "tried again), by shard index.",
            ["shard"],
            registry=r,
        )
        self.shard_backlog = Gauge(
            "chworkers_shard_backlog_batches",
            "Parts spooled for a shard and not confirmed yet, by shard index: a shard that "
            "is down holds back only its own.",
            ["shard"],
            registry=r,
        )
        self.shard_replicas = Gauge(
            "chworkers_shard_replicas",
            "Replicas configured for each shard, by shard index.",
            ["shard"],
            registry=r,
        )
        self.shard_replicas_up = Gauge(
            "chworkers_shard_replicas_up",
            "Replicas of each shard that answered the daemon's last /ping, by shard index.",
            ["shard"],
            registry=r,
        )
        self.shard_split_waiting = Gauge(
            "chworkers_shard_split_waiting_batches",
            "Spooled batches of keyed pipelines not split by shard yet (their table's "
            "columns are not known yet: ClickHouse unreachable, the table missing).",
            registry=r,
        )

        # Broker sources (Redis Streams), by pipeline.
        self.broker_lag = Gauge(
            "chworkers_broker_lag_entries",
            "Entries in the stream not yet delivered to the consumer group, by pipeline.",
            ["pipeline"],
            registry=r,
        )
        self.broker_pending = Gauge(
            "chworkers_broker_pending_entries",
            "Entries delivered to the group and not acknowledged yet (all its consumers), "
            "by pipeline.",
            ["pipeline"],
            registry=r,
        )
        self.broker_redeliveries = Counter(
            "chworkers_broker_redeliveries_total",
            "Entries taken over from a dead or stuck consumer, or re-read after a restart, "
            "by pipeline.",
            ["pipeline"],
            registry=r,
        )
        self.broker_acked = Counter(
            "chworkers_broker_acked_total",
            "Entries acknowledged after their batch was confirmed (or dead-lettered), by pipeline.",
            ["pipeline"],
            registry=r,
        )
