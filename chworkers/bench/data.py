"""The benchmark's data, its sizes, and what every comparison is handed.

All comparisons insert into tables ``(id UInt64, user String, ts DateTime, value Float64)``
(issue 11's shape): rows are generated once per comparison, in batches, before any path
is timed.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chworkers.bench.target import Target
from chworkers.errors import BenchError

COLUMNS = ("id", "user", "ts", "value")
SCHEMA = "id UInt64, user String, ts DateTime, value Float64"
_BASE = dt.datetime(2026, 1, 1)
_USERS = [f"user-{i:04d}" for i in range(1000)]


@dataclass(frozen=True)
class Sizes:
    """How much work one round of each comparison does."""

    rows: int = 2_000_000
    batch: int = 100_000
    rounds: int = 5
    raw_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000, 2_000_000)
    tasks: int = 20_000
    lease_trips: int = 5_000
    daemon_lines: int = 1_000_000
    #: worker counts the Supervisor and daemon paths run with, each a path of its own
    workers: tuple[int, ...] = (1, 2)
    #: the connection budget (``max_connections``); None: one per worker
    connections: int | None = None

    def check(self) -> None:
        for name in ("rows", "batch", "rounds", "tasks", "lease_trips", "daemon_lines"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
        if any(s < 1 for s in self.raw_sizes):
            raise BenchError("--raw-sizes must be positive row counts")
        if not self.workers or min(self.workers) < 1:
            raise BenchError("--workers must be positive worker counts")
        if self.connections is not None and self.connections < 1:
            raise BenchError("--connections must be at least 1")

    @property
    def batches(self) -> int:
        return -(-self.rows // self.batch)


QUICK = Sizes(
    rows=200_000,
    batch=20_000,
    rounds=3,
    raw_sizes=(10_000, 100_000),
    tasks=2_000,
    lease_trips=1_000,
    daemon_lines=100_000,
)


@dataclass
class Env:
    """What a comparison family is built from."""

    target: Target
    sizes: Sizes
    workdir: Path
    progress: Callable[[str], None] | None = None

    def table(self, client: Any, name: str) -> str:
        """Create the empty table ``name`` (dropped with the database); returns ``name``."""
        self.target.create_table(client, name, SCHEMA)
        return name


def make_workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="chworkers-bench-work-")


def row(i: int) -> tuple[int, str, dt.datetime, float]:
    return (i, _USERS[i % 1000], _BASE + dt.timedelta(seconds=i % 86_400), i * 0.25)


def rows(start: int, count: int) -> list[tuple[int, str, dt.datetime, float]]:
    """``count`` rows with ids from ``start``."""
    return [row(i) for i in range(start, start + count)]


def batches(sizes: Sizes) -> list[list[tuple[int, str, dt.datetime, float]]]:
    """The rows of one round, cut in batches of ``sizes.batch``."""
    return [
        rows(start, min(sizes.batch, sizes.rows - start))
        for start in range(0, sizes.rows, sizes.batch)
    ]


def columns(batch: list[tuple[int, str, dt.datetime, float]]) -> dict[str, list[Any]]:
    ids, users, stamps, values = (list(c) for c in zip(*batch, strict=True))
    return {"id": ids, "user": users, "ts": stamps, "value": values}


def count(client: Any, table: str) -> int:
    return int(client.command(f"SELECT count() FROM {table}"))


def expect(client: Any, table: str, wanted: int, path: str) -> None:
    """Raise unless ``table`` holds ``wanted`` rows: a fast path that loses rows is no
    result."""
    got = count(client, table)
    if got != wanted:
        raise BenchError(f"{path}: {table} holds {got:,} rows after the round, not {wanted:,}")
