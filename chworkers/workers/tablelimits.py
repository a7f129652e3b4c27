"""Per-table insert limits, applied by the supervisor across all its workers.

ClickHouse advises about one insert per second per table, and concurrent inserts into
one table multiply its parts. ``table_limits={"events": TableLimit(max_concurrent_inserts=2,
max_inserts_per_second=1)}`` (a pipeline's settings under the daemon) holds every insert
into ``events``, whichever worker runs it, to both. On a sharded cluster the limits hold
per table *and shard*: each shard is a server of its own, with its own parts and merges,
which is what ClickHouse's advice is about, so ``max_concurrent_inserts=2`` lets two
inserts run on each shard at once, and ``max_inserts_per_second=1`` one insert per second
into each shard's table.

The supervisor's loop is the one place that hands tasks to workers, so it is where the
limits are kept, in :class:`TableLimits`, a ledger only the loop touches: an insert is
let start (dispatched) only while its table has a free slot and its next start time has
come; it holds its slot from then until its result comes back or its worker is reaped,
so a worker killed mid-insert gives its slots back with it and a concurrency limit can
never be exceeded, even counting inserts queued in a worker behind others. Inserts held
back wait *parked* apart from the queue (:meth:`TaskQueue.park`): other tables' tasks go
past them to free workers, so a hot table cannot starve the others. An insert limited
by rate goes to a worker with nothing else to do when there is one, and then starts
when it is handed out; when every worker is busy it goes to the least busy one, where
it may start later, so the table's next insert waits for its result and then
``1/max_inserts_per_second`` more: the spacing holds either way, and a table limited by
rate is not starved by others keeping every worker busy. What is limited is insert
tasks: retries of one request within the worker's retry policy, and the requests of
``split_bad_rows`` bisection, run within its slot. Time spent waiting is observed in ``chworkers_table_limit_wait_seconds{table}``;
``chworkers_table_limit_waiting{table}`` counts inserts waiting now (on all shards).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from chworkers.errors import ConfigError
from chworkers.ops.metrics import Metrics
from chworkers.workers.commands import TableLimitSnapshot
from chworkers.workers.options import TableLimit
from chworkers.workers.tasks import INSERT, Lane, Task

log = logging.getLogger(__name__)


class _Lane:
    """One table's inserts on one shard (the one lane of a table that is not sharded)."""

    __slots__ = ("awaiting", "next_start", "peak", "running")

    def __init__(self) -> None:
        self.running = 0
        self.next_start = 0.0
        self.peak = 0  # most inserts running at once so far (stats, tests)
        #: A rate-limited insert sent to a busy worker: when it starts is unknown, so
        #: the next one waits for its result (then 1/rate more).
        self.awaiting: int | None = None


class _Table:
    __slots__ = ("lanes", "limit")

    def __init__(self, limit: TableLimit) -> None:
        self.limit = limit
        self.lanes: dict[int | None, _Lane] = {}  # by shard

    def lane(self, shard: int | None) -> _Lane:
        found = self.lanes.get(shard)
        if found is None:
            found = self.lanes[shard] = _Lane()
        return found

    @property
    def running(self) -> int:
        return sum(lane.running for lane in self.lanes.values())


class TableLimits:
    """The ledger of per-table limits: slots in use and the next start allowed."""

    def __init__(self, limits: Mapping[str, TableLimit], metrics: Metrics) -> None:
        self.metrics = metrics
        self.tables: dict[str, _Table] = {}
        self._parked_at: dict[int, float] = {}  # task id -> when it was first held back
        self._holding: dict[int, Lane] = {}  # task id -> the lane whose slot it holds
        self.set(limits)

    def __bool__(self) -> bool:
        return bool(self.tables)

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{name}: {t.running} running, max {t.limit.max_concurrent_inserts}"
            for name, t in self.tables.items()
        )
        return f"<TableLimits {inner}>"

    def set(self, limits: Mapping[str, TableLimit]) -> None:
        """Replace the limits (inserts running keep their slots)."""
        old = self.tables
        self.tables = {}
        for table in old.keys() - limits.keys():
            self.metrics.table_limit_waiting.labels(table).set(0)
        for table, limit in limits.items():
            if not limit.limited:
                continue
            entry = old.get(table) or _Table(limit)
            entry.limit = limit
            self.tables[table] = entry
            self.metrics.table_limit_waiting.labels(table).set(0)

    def limited(self, task: Task) -> _Table | None:
        if task.kind != INSERT or task.table is None:
            return None
        return self.tables.get(task.table)

    def room(self, lane: Lane, now: float) -> int:
        """How many of a table's inserts into a shard (``lane``) may start now."""
        table, shard = lane
        entry = self.tables.get(table)
        if entry is None:
            return 1 << 30  # its limit was lifted: all of them
        limit, state = entry.limit, entry.lane(shard)
        n = 1 << 30
        if limit.max_concurrent_inserts is not None:
            n = max(0, limit.max_concurrent_inserts - state.running)
        if limit.max_inserts_per_second is not None:
            n = min(n, 1 if now >= state.next_start and state.awaiting is None else 0)
        return n

    def admit(self, task: Task, now: float, *, idle: bool = True) -> bool:
        """Let ``task`` start now (taking its slot) or say it must wait; ``idle``: the
        worker it would go to has nothing else to do (so it starts at once)."""
        entry = self.limited(task)
        if entry is None:
            if self._parked_at:  # held back, then its limit was lifted
                self._parked_at.pop(task.id, None)
            return True
        if not self.room(task.lane, now):
            self._parked_at.setdefault(task.id, now)
            return False
        state = entry.lane(task.shard)
        state.running += 1
        self._holding[task.id] = task.lane
        state.peak = max(state.peak, state.running)
        rate = entry.limit.max_inserts_per_second
        if rate is not None:
            state.next_start = max(now, state.next_start) + 1.0 / rate
            if not idle:
                state.awaiting = task.id
        waited = now - self._parked_at.pop(task.id, now)
        self.metrics.table_limit_wait.labels(task.table).observe(waited)
        return True

    def release(self, task: Task, now: float) -> None:
        """``task``'s insert ended (its result, or its worker's death): its slot is free."""
        lane = self._holding.pop(task.id, None)
        if lane is None:
            return
        entry = self.tables.get(lane[0])
        if entry is None:
            return
        state = entry.lane(lane[1])
        state.running = max(0, state.running - 1)
        if state.awaiting == task.id:
            state.awaiting = None
            rate = entry.limit.max_inserts_per_second
            if rate is not None:  # it started before now: the next one 1/rate after
                state.next_start = max(state.next_start, now + 1.0 / rate)

    def next_wakeup(self, parked: list[Lane], now: float) -> float | None:
        """When the loop must look again for a ``parked`` table (on a shard) that waits
        on time alone (its next start); those waiting on a slot or on an insert's result
        are woken by that result, and must not make the loop spin until it comes."""
        times = []
        for table, shard in parked:
            entry = self.tables.get(table)
            if entry is None or entry.limit.max_inserts_per_second is None:
                continue
            state = entry.lane(shard)
            if state.awaiting is not None or state.next_start <= now:
                continue
            most = entry.limit.max_concurrent_inserts
            if most is not None and state.running >= most:
                continue
            times.append(state.next_start)
        return min(times) if times else None

    def publish(self, parked: Mapping[str, int]) -> None:
        for table in self.tables:
            self.metrics.table_limit_waiting.labels(table).set(parked.get(table, 0))

    def snapshot(self, parked: Mapping[str, int]) -> dict[str, TableLimitSnapshot]:
        return {
            table: {
                "max_concurrent_inserts": entry.limit.max_concurrent_inserts,
                "max_inserts_per_second": entry.limit.max_inserts_per_second,
                "running": entry.running,
                "waiting": parked.get(table, 0),
                "peak": max((lane.peak for lane in entry.lanes.values()), default=0),
            }
            for table, entry in self.tables.items()
        }


def coerce_limits(
    given: Mapping[str, TableLimit | Mapping[str, object]] | None,
) -> dict[str, TableLimit]:
    """``table_limits=`` as given (limits or mappings of their fields, by table), checked."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise ConfigError(
            f"table_limits: a mapping of table to TableLimit, not {type(given).__name__}",
            key="table_limits",
            value=given,
            expected="{'table': TableLimit(...) or {'max_concurrent_inserts': 2, ...}}",
        )
    return {str(table): TableLimit.coerce(limit, str(table)) for table, limit in given.items()}
