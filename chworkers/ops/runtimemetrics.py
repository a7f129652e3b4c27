"""The runtime's instruments: the shared queue, the worker processes (their states,
restarts, memory, autoscaling) and per-table insert limits (part of
:class:`~chworkers.ops.metrics.Metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RuntimeMetrics:
    """The queue's and the workers' instruments, registered into ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
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
            "memory over max_worker_memory, rolling restart, forkserver: the fork server "
            "that started them died).",
            ["reason"],
            registry=r,
        )
        # Known label values exist from the start, at 0, so that increase() sees the
        # first restart instead of only the series appearing.
        for reason in ("crashed", "hung", "recycled", "memory", "rolling", "forkserver"):
            self.worker_restarts.labels(reason=reason)
        self.fork_server_restarts = Counter(
            "chworkers_fork_server_restarts_total",
            "Fork servers (start method forkserver) found dead and started again.",
            registry=r,
        )
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
