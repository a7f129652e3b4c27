"""Where and when each insert ran, recorded in the worker processes themselves: for
tests of per-table insert limits (overlaps and spacing measured where inserts happen)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from faultproxy import FaultProxy

from chworkers.workers.context import TaskInfo, WorkerContext
from chworkers.workers.middleware import Middleware
from chworkers.workers.supervisor import Supervisor


class Windows(Middleware):
    """Appends ``table start end`` (monotonic, shared by all processes) per insert;
    ``table@shard`` for an insert into a shard of a cluster."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_task(
        self,
        worker: WorkerContext,
        task: TaskInfo,
        result: object,
        error: BaseException | None,
        duration: float,
    ) -> None:
        end = time.monotonic()
        with open(self.path, "a") as fh:
            where = task.table if task.shard is None else f"{task.table}@{task.shard}"
            fh.write(f"{where} {end - duration!r} {end!r}\n")


def windows(path: Path) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for line in path.read_text().splitlines():
        table, start, end = line.split()
        out.setdefault(table, []).append((float(start), float(end)))
    return {table: sorted(w) for table, w in out.items()}


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def recording(
    url: str, record: Path, workers: int, table_limits: Mapping[str, Any], **kw: Any
) -> Supervisor:
    """A supervisor (not started) of ``workers`` processes, as many connections, whose
    every insert's window is appended to ``record`` (``kw``: more of its arguments)."""
    return Supervisor(
        url,
        workers=workers,
        max_connections=workers,
        start_method="fork",
        middleware=[Windows(str(record))],
        table_limits=table_limits,
        **kw,
    )


def warm(sup: Supervisor, record: Path, tables: Sequence[str] = ("hot", "cold")) -> None:
    """One insert into each table, so their columns are known (producers encode at once
    from then on), and ``record`` started afresh."""
    for table in tables:
        sup.insert(table, [[100]], ["n"]).result(60)
    record.unlink()


def slow_tables(fault_proxy: FaultProxy, ch_client: Any, database: str) -> str:
    """Tables hot and cold, and a URL through ``fault_proxy`` whose every answer comes
    0.15 s late (so inserts last long enough to overlap)."""
    for table in ("hot", "cold"):
        ch_client.command(f"CREATE TABLE {table} (n UInt64) ENGINE = MergeTree ORDER BY n")
    fault_proxy.set("delay", delay=0.15)
    return f"http://127.0.0.1:{fault_proxy.port}/{database}"
