"""Prometheus instruments, declared once.

Library code never touches prometheus_client's global registry: :class:`Metrics` takes
the registry to register into, so every test (and every supervisor) builds its own. The
names follow Prometheus conventions (``chworkers_`` prefix, base units, ``_total`` for
counters) and are the contract the Grafana dashboard and the alert rules in
``grafana/`` are written against: renaming one is a breaking change.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from chworkers.http.limits import REFUSAL_REASONS

#: Buckets for request and task latencies, in seconds (1 ms .. 2 min).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
#: Buckets for waiting on a pooled connection, in seconds (50 us .. 30 s).
ACQUIRE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Metrics:
    """All of chworkers' instruments, registered into ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.build_info = Info("chworkers_build", "chworkers version.", registry=r)

        # Connection pool.
        self.pool_in_use = Gauge(
            "chworkers_pool_connections_in_use", "Connections lent out right now.", registry=r
        )
        self.pool_idle = Gauge(
            "chworkers_pool_connections_idle", "Open connections nobody holds.", registry=r
        )
        self.pool_max = Gauge(
            "chworkers_pool_connections_max", "Configured maximum connections.", registry=r
        )
        self.pool_waiting = Gauge(
            "chworkers_pool_waiters", "Callers waiting for a connection.", registry=r
        )
        self.pool_acquire_wait = Histogram(
            "chworkers_pool_acquire_wait_seconds",
            "Time spent waiting for a connection.",
            buckets=ACQUIRE_BUCKETS,
            registry=r,
        )
        self.pool_created = Counter(
            "chworkers_pool_connections_created_total", "Connections opened.", registry=r
        )
        self.pool_closed = Counter(
            "chworkers_pool_connections_closed_total",
            "Connections closed, by reason (idle, lifetime, broken, shutdown).",
            ["reason"],
            registry=r,
        )

        # ClickHouse requests.
        self.errors = Counter(
            "chworkers_errors_total",
            "Failed ClickHouse operations, by kind (server, transport, timeout, pool, task) "
            "and ClickHouse error code ('' when there is none).",
            ["kind", "code"],
            registry=r,
        )
        self.retries = Counter(
            "chworkers_retries_total",
            "Attempts repeated after a retryable error, by kind.",
            ["kind"],
            registry=r,
        )

        # Tasks.
        self.tasks = Counter(
            "chworkers_tasks_total",
            "Finished tasks, by kind (insert, call) and outcome (success, failure, requeued).",
            ["kind", "outcome"],
            registry=r,
        )
        self.task_duration = Histogram(
            "chworkers_task_duration_seconds",
            "Task run time in a worker, retries included.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.insert_duration = Histogram(
            "chworkers_insert_duration_seconds",
            "Duration of one successful insert request, by table.",
            ["table"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows_inserted = Counter(
            "chworkers_rows_inserted_total",
            "Rows ClickHouse wrote (its summary's written_rows), by table; replays apart "
            "(rows_replayed).",
            ["table"],
            registry=r,
        )
        self.rows_replayed = Counter(
            "chworkers_rows_replayed_total",
            "Rows sent again after an attempt that may have landed (a restart, a failed "
            "or lost request), by table: ClickHouse drops those it already has by their "
            "deduplication token, yet counts them as written. Not in rows_inserted.",
            ["table"],
            registry=r,
        )
        self.bytes_inserted = Counter(
            "chworkers_bytes_inserted_total",
            "Bytes ClickHouse wrote (its summary's written_bytes, uncompressed), by table.",
            ["table"],
            registry=r,
        )
        self.last_insert = Gauge(
            "chworkers_last_insert_timestamp_seconds",
            "Unix time of the last confirmed insert, by table.",
            ["table"],
            registry=r,
        )

        # Queue and workers.
        self.queue_depth = Gauge(
            "chworkers_queue_depth", "Tasks waiting in the shared queue.", registry=r
        )
        self.queue_capacity = Gauge(
            "chworkers_queue_capacity", "Capacity of the shared queue.", registry=r
        )
        self.workers = Gauge(
            "chworkers_workers",
            "Worker processes, by state (starting, idle, busy, stopping).",
            ["state"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "chworkers_worker_restarts_total",
            "Workers replaced, by reason (crashed, hung, recycled after max_tasks_per_worker, "
            "memory over max_worker_memory, rolling restart).",
            ["reason"],
            registry=r,
        )
        # Known label values exist from the start, at 0, so that increase() sees the
        # first restart instead of only the series appearing.
        for reason in ("crashed", "hung", "recycled", "memory", "rolling"):
            self.worker_restarts.labels(reason=reason)
        self.table_limit_wait = Histogram(
            "chworkers_table_limit_wait_seconds",
            "Time an insert into a table with limits (max_concurrent_inserts, "
            "max_inserts_per_second) waited for them before it was handed to a worker.",
            ["table"],
            buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.table_limit_waiting = Gauge(
            "chworkers_table_limit_waiting",
            "Inserts waiting now for their table's limits, by table.",
            ["table"],
            registry=r,
        )
        self.workers_target = Gauge(
            "chworkers_workers_target",
            "Worker processes the supervisor aims for (workers, or the autoscaled count).",
            registry=r,
        )
        self.worker_scaling = Counter(
            "chworkers_worker_scaling_total",
            "Changes of the worker count by autoscaling, by direction (up, down).",
            ["direction"],
            registry=r,
        )
        for direction in ("up", "down"):
            self.worker_scaling.labels(direction=direction)
        self.worker_memory = Gauge(
            "chworkers_worker_memory_bytes",
            "Resident memory (RSS) of the worker processes: the largest (stat=max) and "
            "all of them together (stat=sum), as each last read it.",
            ["stat"],
            registry=r,
        )
        self.worker_memory_limit = Gauge(
            "chworkers_worker_memory_limit_bytes",
            "max_worker_memory: the RSS over which a worker is replaced (0: none).",
            registry=r,
        )

        # Daemon: spool, dead letters, sources.
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
            "Spool files found truncated or corrupt and moved aside.",
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
        self.http_connections = Gauge(
            "chworkers_http_connections",
            "Connections an HTTP endpoint serves now (one thread each), by endpoint: push "
            "(POST /ingest/<table>) or metrics; at most its limits.max_connections.",
            ["endpoint"],
            registry=r,
        )
        self.http_refused = Counter(
            "chworkers_http_refused_total",
            "Clients an HTTP endpoint refused at one of its limits, by endpoint and reason: "
            "busy (max_connections, 503), memory (max_buffered_bytes, 503), slow (408), "
            "too_large (413), malformed (400: bad framing or request line).",
            ["endpoint", "reason"],
            registry=r,
        )

        # Health (chworkers.ops.health) and the embedded ClickHouse child.
        self.health_level = Gauge(
            "chworkers_health_level",
            "Health: 0 ok, 1 degraded (data safe, not flowing), 2 failing (restart needed).",
            registry=r,
        )
        self.health_problems = Gauge(
            "chworkers_health_problems",
            "Problems a component reports now, by component.",
            ["component"],
            registry=r,
        )
        self.embedded_up = Gauge(
            "chworkers_embedded_up",
            "Whether the daemon's embedded ClickHouse child is serving (1) or not (0; also "
            "when the daemon uses another ClickHouse).",
            registry=r,
        )
        self.embedded_restarts = Counter(
            "chworkers_embedded_restarts_total",
            "Times the embedded ClickHouse child died and was started again.",
            registry=r,
        )

    def http_endpoint(self, endpoint: str) -> HttpObserver:
        """Series for one HTTP endpoint (zero-valued until something happens)."""
        for reason in REFUSAL_REASONS:
            self.http_refused.labels(endpoint=endpoint, reason=reason)
        self.http_connections.labels(endpoint=endpoint)
        return HttpObserver(self, endpoint)


class HttpObserver:
    """Counts an HTTP endpoint's refusals (``on_refusal``, its server's hook) and
    publishes its open connections (``connections``, set once the server exists) when
    scraped (``refresh``)."""

    def __init__(self, metrics: Metrics, endpoint: str) -> None:
        self._metrics = metrics
        self._endpoint = endpoint
        self.connections: Callable[[], int] = lambda: 0

    def on_refusal(self, reason: str) -> None:
        self._metrics.http_refused.labels(endpoint=self._endpoint, reason=reason).inc()

    def refresh(self) -> None:
        self._metrics.http_connections.labels(endpoint=self._endpoint).set(self.connections())
