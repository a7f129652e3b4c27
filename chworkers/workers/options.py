"""The supervisor's settings, declared once with :mod:`chworkers.settings`.

Each field of :class:`SupervisorOptions` is declared with its default, help text, unit
and bounds; the Python API (``Supervisor(workers=4, ...)``), the daemon's configuration
file and environment variables, ``chworkers config --defaults`` and the reference in the
docs all derive from that declaration. Fields marked ``reload`` may change while the
supervisor runs (:meth:`Supervisor.reconfigure`, SIGHUP). Invalid values raise
:class:`ConfigError` naming the key, the value and what is expected.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from chworkers.clickhouse.retry import RetryPolicy
from chworkers.errors import ConfigError
from chworkers.http.limits import HttpLimits
from chworkers.settings import reloadable, section, setting, validate

log = logging.getLogger(__name__)

StartMethod = Literal["fork", "spawn", "forkserver"]


@dataclass(frozen=True)
class TableLimit:
    """Limits on the inserts into one table, across all workers (``table_limits=``, a
    pipeline's settings under the daemon)."""

    max_concurrent_inserts: int | None = setting(
        None,
        "Inserts into the table that may run at once, across all workers (none: no "
        "limit; on a sharded cluster, into each shard's table); the rest wait in the "
        "supervisor while other tables' inserts go on.",
        minimum=1,
    )
    max_inserts_per_second: float | None = setting(
        None,
        "Inserts into the table handed to workers per second, across all workers: "
        "consecutive ones start at least 1/this apart (none: no limit; ClickHouse advises "
        "about 1 per table; on a sharded cluster, per shard).",
        minimum=0.001,
    )

    def __post_init__(self) -> None:
        validate(self, source="table limit")

    @property
    def limited(self) -> bool:
        return self.max_concurrent_inserts is not None or self.max_inserts_per_second is not None

    def stricter(self, other: TableLimit) -> TableLimit:
        """The tighter of both limits, each on its own (two pipelines into one table)."""

        def least(a: Any, b: Any) -> Any:
            return b if a is None else a if b is None else min(a, b)

        return TableLimit(
            least(self.max_concurrent_inserts, other.max_concurrent_inserts),
            least(self.max_inserts_per_second, other.max_inserts_per_second),
        )

    @classmethod
    def coerce(cls, value: TableLimit | Mapping[str, object], table: str) -> TableLimit:
        if isinstance(value, TableLimit):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"table_limits[{table!r}]: a TableLimit or a mapping of its fields, not "
                f"{type(value).__name__}",
                key=f"table_limits.{table}",
                value=value,
                expected="TableLimit(max_concurrent_inserts=..., max_inserts_per_second=...)",
            )
        known = {f.name for f in dataclasses.fields(cls)}
        for key in value:
            if key not in known:
                raise ConfigError(
                    f"table_limits[{table!r}]: unknown setting {key!r}",
                    key=f"table_limits.{table}.{key}",
                    value=value[key],
                    expected="one of " + ", ".join(sorted(known)),
                )
        return cls(**cast(Any, dict(value)))


@dataclass(frozen=True)
class SupervisorOptions:
    """Supervisor settings."""

    workers: int = setting(
        os.cpu_count() or 1, "Worker processes.", minimum=1, reload=True, shown="the CPU count"
    )
    min_workers: int | None = setting(
        None,
        "Autoscaling: the fewest worker processes (none: workers). Autoscaling is on when "
        "max_workers is above it; workers is then the count it starts with.",
        minimum=1,
        reload=True,
    )
    max_workers: int | None = setting(
        None, "Autoscaling: the most worker processes (none: workers).", minimum=1, reload=True
    )
    scale_up_after: float = setting(
        1.0,
        "Autoscaling: add a worker when the oldest queued task has waited this long (the "
        "workers do not keep up), at most one per this interval and none while one boots.",
        unit="seconds",
        minimum=0.01,
        reload=True,
    )
    scale_down_after: float = setting(
        30.0,
        "Autoscaling: retire a worker after this long with a worker idle and nothing "
        "queued at every look, and this long after the last change.",
        unit="seconds",
        minimum=0.1,
        reload=True,
    )
    scale_up_min_idle_cpu: float = setting(
        0.1,
        "Autoscaling: add a worker only while at least this fraction of the machine's CPU "
        "time was idle over the last look (0: whatever the CPU; 1: only after a look at an "
        "entirely idle machine).",
        minimum=0,
        maximum=1,
        reload=True,
    )
    max_connections: int | None = setting(
        None,
        "ClickHouse requests in flight across all workers (none: as many as workers).",
        minimum=1,
        reload=True,
    )
    start_method: StartMethod = setting(
        "forkserver", "How worker processes start: fork, spawn or forkserver."
    )
    queue_size: int = setting(
        1000, "Tasks the queue holds before producers block.", minimum=1, reload=True
    )
    queue_max_bytes: int | None = setting(
        256 * 1024 * 1024,
        "Bytes of encoded tasks the queue holds before producers block (none: no limit).",
        unit="bytes",
        minimum=1,
    )
    queue_timeout: float | None = setting(
        None,
        "How long insert/submit/call wait on a full queue before QueueFullError (none: no limit).",
        unit="seconds",
        minimum=0.001,
        reload=True,
    )
    native_encoding: bool = setting(
        True, "Encode rows to ClickHouse Native in the producer's thread (else pickle them)."
    )
    prefetch: int = setting(
        256, "Most tasks sent ahead to one worker (fewer when tasks are slow).", minimum=1
    )
    prefetch_bytes: int = setting(
        16 * 1024 * 1024, "Most bytes of tasks sent ahead to one worker.", unit="bytes", minimum=1
    )
    graceful_timeout: float = setting(
        30.0,
        "How long a graceful stop waits for queued and running tasks.",
        unit="seconds",
        minimum=0.001,
        reload=True,
    )
    hung_timeout: float = setting(
        360.0,
        "A worker running a task without a heartbeat for this long is killed and replaced. "
        "Workers beat before each ClickHouse request (every insert, retry and split "
        "sub-batch) and while waiting for a connection; long tasks may call "
        "chworkers.workers.worker.beat(). Keep it above connect_timeout + send_receive_timeout "
        "(310 s by default), the longest one request may legitimately take.",
        unit="seconds",
        minimum=0.001,
        reload=True,
    )
    split_max_requests: int = setting(
        1000,
        "Insert requests one batch may cost while rejected rows are bisected out of it "
        "(insert_raw(split_bad_rows=True), the daemon's batches); once spent, the records "
        "not yet isolated are returned rejected (dead letters, reason 'budget').",
        minimum=1,
        reload=True,
    )
    split_max_seconds: float = setting(
        60.0,
        "Seconds the bisection of one batch may take; once spent, as split_max_requests.",
        unit="seconds",
        minimum=0.001,
        reload=True,
    )
    heartbeat_interval: float = setting(
        1.0, "How often an idle worker beats.", unit="seconds", minimum=0.001
    )
    max_tasks_per_worker: int | None = setting(
        None, "Tasks after which a worker is replaced (none: never).", minimum=1, reload=True
    )
    max_tasks_jitter: int = setting(
        0,
        "Random extra tasks (0..jitter) per worker, so that workers do not recycle together.",
        minimum=0,
        reload=True,
    )
    max_worker_memory: int | None = setting(
        None,
        "A worker whose resident memory (RSS) is over this many bytes after a task is "
        "replaced: it finishes that task, the tasks it was sent but had not started go to "
        "other workers, and a fresh worker takes its place (none: never).",
        unit="bytes",
        minimum=1024 * 1024,
        reload=True,
    )
    kept_memory_files_bytes: int | None = setting(
        None,
        "Most bytes of memory files (the shared memory that hands a task's buffer of 1 "
        "MiB or more to a worker) kept for later tasks once theirs are done, for 30 s: "
        "they save a large batch its pages' allocation, but they are the supervisor's "
        "memory, charged to its cgroup (systemd's MemoryMax=) (none: 1/16 of the cgroup's "
        "memory limit when one is set, at most 256 MiB; 0: keep none).",
        unit="bytes",
        minimum=0,
        reload=True,
        shown="1/16 of the cgroup's memory limit, at most 256 MiB",
    )
    max_task_crashes: int = setting(
        2,
        "Times a task may take its worker down (crash or hang) before it fails.",
        minimum=1,
        reload=True,
    )
    restart_backoff: float = setting(
        0.1,
        "First delay before replacing a worker that died young; doubles each time.",
        unit="seconds",
        minimum=0.001,
    )
    restart_backoff_max: float = setting(
        10.0, "Longest delay before replacing a worker.", unit="seconds", minimum=0.001
    )
    max_boot_failures: int = setting(
        5, "Workers dying in a row at boot before the supervisor gives up.", minimum=1
    )
    boot_timeout: float = setting(
        60.0, "How long a worker may take to boot.", unit="seconds", minimum=0.001
    )
    metrics_host: str = setting(
        "127.0.0.1", "Address of the /metrics, /healthz and /readyz endpoint."
    )
    metrics_port: int | None = setting(
        None,
        "Port of that endpoint (0: any free port, none: no endpoint).",
        minimum=0,
        maximum=65535,
    )
    metrics_limits: HttpLimits = section(
        HttpLimits, "Connections, timeouts and the listen backlog of that endpoint."
    )
    switch_interval: float | None = setting(
        0.001,
        "Python's thread switch interval while the supervisor runs (sys.setswitchinterval; "
        "none: leave it). Shorter than the 5 ms default, so that the loop and lease threads "
        "answer workers promptly while producer threads encode batches.",
        unit="seconds",
        minimum=0.0001,
    )
    handle_signals: bool = setting(
        False, "Own the process's signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads."
    )

    def __post_init__(self) -> None:
        validate(self, source="supervisor")
        low, high = self.worker_bounds
        if low > high:
            raise ConfigError(
                f"supervisor: min_workers ({low}) is above max_workers ({high})",
                key="min_workers",
                value=low,
                expected=f"at most max_workers ({high})",
            )

    @property
    def worker_bounds(self) -> tuple[int, int]:
        """(fewest, most) workers: both ``workers`` without autoscaling."""
        low = self.min_workers if self.min_workers is not None else self.workers
        high = self.max_workers if self.max_workers is not None else self.workers
        if self.min_workers is None and high < low:
            low = high  # max_workers alone, below workers: it bounds the start count
        if self.max_workers is None and high < low:
            high = low
        return low, high

    @property
    def autoscaling(self) -> bool:
        low, high = self.worker_bounds
        return high > low

    @property
    def initial_workers(self) -> int:
        """The count it starts with: ``workers``, within the autoscaling bounds."""
        low, high = self.worker_bounds
        return min(max(self.workers, low), high)

    @property
    def connections(self) -> int:
        if self.max_connections is not None:
            return self.max_connections
        return self.worker_bounds[1]  # as many as workers, autoscaled ones included

    @classmethod
    def reloadable(cls) -> frozenset[str]:
        return reloadable(cls)

    def reconfigured(
        self, changes: Mapping[str, object]
    ) -> tuple[SupervisorOptions, RetryPolicy | None]:
        """These options with ``changes`` applied while running (``retry``, a policy or a
        mapping of its fields, comes back apart); a setting that cannot change while
        running is a :class:`ConfigError`."""
        changes = dict(changes)
        retry = changes.pop("retry", None)
        policy = RetryPolicy.coerce(cast(Any, retry)) if retry is not None else None
        fixed = set(changes) - self.reloadable()
        if fixed:
            key = sorted(fixed)[0]
            raise ConfigError(
                f"setting {key!r} cannot change while running; restart instead",
                key=key,
                value=changes[key],
                expected="one of " + ", ".join(sorted(self.reloadable())),
            )
        return self.build(changes, base=self), policy

    @classmethod
    def build(
        cls, values: Mapping[str, object], base: SupervisorOptions | None = None
    ) -> SupervisorOptions:
        """Options from ``values`` (field names; on top of ``base`` when given), each
        checked; an unknown name is a :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"unknown supervisor setting {key!r}",
                    key=key,
                    value=values[key],
                    expected="one of " + ", ".join(sorted(known)),
                )
        fields: dict[str, Any] = dict(values)  # each one is validated in __post_init__
        if base is None:
            return cls(**fields)
        return dataclasses.replace(base, **fields)
