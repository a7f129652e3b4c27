"""The client side's instruments: the connection pool, ClickHouse requests and their
errors and retries, and the tasks and inserts workers run (part of
:class:`~chworkers.ops.metrics.Metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


def decades(first: float, last: float) -> tuple[float, ...]:
    """Histogram buckets 1, 2.5 and 5 times each power of ten, from ``first`` (a power of
    ten) to ``last`` (one of those steps), both included."""
    out: list[float] = []
    power = first
    while power <= last:
        out += [round(power * step, 12) for step in (1.0, 2.5, 5.0) if power * step <= last]
        power = round(power * 10, 12)
    return tuple(out)


#: Buckets for request and task latencies, in seconds (1 ms .. 2 min).
LATENCY_BUCKETS = (*decades(0.001, 10.0), 30.0, 60.0, 120.0)
#: Buckets for waiting on a pooled connection, in seconds (50 us .. 30 s).
ACQUIRE_BUCKETS = (0.00005, *decades(0.0001, 10.0), 30.0)


class ClientMetrics:
    """The pool's, the requests' and the tasks' instruments, registered into ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
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
            "Rows inserted into the table (those sent that ClickHouse took; not what its "
            "materialized views wrote), by table; replays apart (rows_replayed).",
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
        self.partition_splits = Counter(
            "chworkers_partition_splits_total",
            "Batches inserted as groups of whole partitions (more partitions than "
            "max_partitions_per_insert_block), by table and how: refused (sent whole, "
            "refused by ClickHouse, then split) or presplit (split before sending, the "
            "table having refused one lately).",
            ["table", "how"],
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
