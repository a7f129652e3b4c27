"""The pipelines' tables, created in the background once ClickHouse answers.

The daemon takes data in (and spools it) from the moment it starts, whether or not
ClickHouse is reachable: a daemon that waited for ClickHouse before opening its intake
would exit after its retries and be restarted in a loop by systemd, losing what its
sources offered meanwhile. So the ``CREATE TABLE IF NOT EXISTS`` of each pipeline with a
declared schema runs here, on a thread of its own, again and again with a growing
backoff until it succeeds; spooled batches for a table that is not created yet are held
(on disk, in the spool; only their descriptions in memory) and handed to the dispatcher
in spool order once it is. Tables without a declared schema are expected to exist and
are never held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future
from typing import Any

from chworkers.backoff import capped_backoff
from chworkers.daemon.spool import SpooledBatch
from chworkers.errors import ServerError
from chworkers.wording import plural

__all__ = ["ShardTables", "Tables", "refused_create"]

log = logging.getLogger(__name__)


class Tables:
    """Creates tables with retries and holds the batches that wait for them.

    ``statements`` maps a table to its ``CREATE`` statement; ``create(statement)``
    submits it (to the workers) and returns a future; ``release(batch)`` hands a batch
    on (to the dispatcher). One attempt may take ``attempt_timeout`` seconds.
    """

    def __init__(
        self,
        statements: Mapping[str, str],
        create: Callable[[str], Future[Any]],
        release: Callable[[SpooledBatch], None],
        *,
        initial_backoff: float = 1.0,
        max_backoff: float = 10.0,
        attempt_timeout: float = 120.0,
        where: str = "",
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        #: What the tables are on, for messages ("shard 1: "), "" for one ClickHouse.
        self.where = where
        #: Told of every failed attempt (the spool copies batches that must wait).
        self.on_failure = on_failure
        self._create = create
        self._release = release
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.attempt_timeout = attempt_timeout
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._pending = dict(statements)  # table -> statement, not created yet
        self._held: dict[str, list[SpooledBatch]] = {}
        #: table -> attempts, since, the last error, whether ClickHouse answered it
        self._failures: dict[str, tuple[int, float, str, bool]] = {}
        self._stop = threading.Event()
        self._again = threading.Event()  # cut the current backoff short
        self._thread = threading.Thread(target=self._run, name="chworkers-tables", daemon=True)

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"<Tables: {len(self._pending)} not created yet, "
                f"{sum(map(len, self._held.values()))} batches held>"
            )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop trying; held batches stay in the spool for the next start."""
        self._stop.set()
        self._again.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.attempt_timeout + 5)

    def retry_now(self) -> None:
        """Try the tables not created yet at once (SIGHUP: the cause may be fixed)."""
        self._again.set()

    def offer(self, batch: SpooledBatch) -> None:
        """A spooled batch: on to the dispatcher now, or once its table exists."""
        with self._lock:
            if batch.table in self._pending:
                self._held.setdefault(batch.table, []).append(batch)
                return
            # Under the lock, so that a table's held batches go before any newer one.
            self._release(batch)

    def held(self) -> int:
        """Batches waiting for their table to be created."""
        with self._lock:
            return sum(len(batches) for batches in self._held.values())

    def pending(self) -> list[str]:
        """Tables not created yet."""
        with self._lock:
            return sorted(self._pending)

    def wait(self, timeout: float | None = None) -> bool:
        """Until every table is created (True) or ``timeout`` passes (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._done.wait(left)
        return True

    def problems(self) -> list[str]:
        """Tables whose creation failed so far, with the last error (for health)."""
        now = time.monotonic()
        with self._lock:
            return [
                f"{self.where}table {table} is not created yet ({plural(attempts, 'attempt')} in "
                f"{now - since:.0f} s, {plural(len(self._held.get(table, ())), 'batch')} waiting for "
                f"it): {error}"
                for table, (attempts, since, error, _) in sorted(self._failures.items())
                if table in self._pending
            ]

    def refused(self) -> dict[str, str]:
        """Tables not created yet because ClickHouse answered the ``CREATE`` with an
        error (a wrong type, a syntax error, no permission), with that error: unlike an
        outage, waiting does not fix these."""
        with self._lock:
            return {
                table: f"{self.where}{error}"
                for table, (_, _, error, answered) in self._failures.items()
                if answered and table in self._pending
            }

    def _run(self) -> None:
        rounds = 0
        while not self._stop.is_set():
            with self._lock:
                todo = list(self._pending.items())
            if not todo:
                return
            for table, statement in todo:
                if self._stop.is_set():
                    return
                self._attempt(table, statement)
            with self._lock:
                if not self._pending:
                    return
            rounds += 1
            if self._again.wait(capped_backoff(self.initial_backoff, rounds, self.max_backoff)):
                self._again.clear()
                rounds = 0

    def _attempt(self, table: str, statement: str) -> None:
        future = self._create(statement)
        # Waited for in slices: a stop does not wait out an attempt that ClickHouse being
        # down stretches to the retry policy's deadline (its outcome no longer matters,
        # and the daemon's stop is bounded by graceful_timeout).
        deadline = time.monotonic() + self.attempt_timeout
        while not futures.wait([future], timeout=0.2).done:
            if self._stop.is_set():
                return
            if time.monotonic() >= deadline:
                break
        try:
            future.result(timeout=0)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            answered = isinstance(exc, ServerError) or isinstance(exc.__cause__, ServerError)
            with self._lock:
                attempts, since, _, _ = self._failures.get(table, (0, time.monotonic(), "", False))
                self._failures[table] = (attempts + 1, since, error, answered)
                held = len(self._held.get(table, ()))
            log.warning(
                "%stable %s cannot be created yet (attempt %d; %s waiting for it, kept in "
                "the spool); trying again: %s",
                self.where,
                table,
                attempts + 1,
                plural(held, "batch"),
                error,
            )
            if self.on_failure is not None:
                self.on_failure()
            return
        with self._lock:
            self._pending.pop(table, None)
            self._failures.pop(table, None)
            batches = self._held.pop(table, [])
            for batch in batches:
                self._release(batch)
            self._done.notify_all()
        log.info(
            "%stable %s is ready%s",
            self.where,
            table,
            f"; sending its {plural(len(batches), 'held batch', 'held batches')}"
            if batches
            else "",
        )


class ShardTables:
    """One :class:`Tables` per shard of a cluster: a table is created on each shard on
    its own, and a batch (a shard's part) waits only for its own shard's table, so a
    shard that is down at start holds back only its own parts."""

    def __init__(self, shards: Sequence[Tables], shard_of: Callable[[SpooledBatch], int]) -> None:
        self.shards = tuple(shards)
        self._shard_of = shard_of

    def __repr__(self) -> str:
        return f"<ShardTables: {', '.join(map(repr, self.shards))}>"

    def start(self) -> None:
        for tables in self.shards:
            tables.start()

    def stop(self) -> None:
        for tables in self.shards:
            tables.stop()

    def retry_now(self) -> None:
        for tables in self.shards:
            tables.retry_now()

    def offer(self, batch: SpooledBatch) -> None:
        self.shards[self._shard_of(batch) % len(self.shards)].offer(batch)

    def held(self) -> int:
        return sum(tables.held() for tables in self.shards)

    def pending(self) -> list[str]:
        return sorted({table for tables in self.shards for table in tables.pending()})

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for tables in self.shards:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not tables.wait(left):
                return False
        return True

    def problems(self) -> list[str]:
        return [line for tables in self.shards for line in tables.problems()]

    def refused(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for tables in self.shards:
            for table, error in tables.refused().items():
                out.setdefault(table, error)
        return out


def refused_create(conn: Any, columns: str, statement: str) -> str | None:
    """Why ClickHouse would refuse a pipeline's ``create`` (``columns``: a wrong type, a
    bad default or codec; ``statement``: its syntax), asked without creating anything;
    None when it would not refuse them (the engine's arguments are only checked by the
    ``CREATE`` itself). ``conn`` is a :class:`~chworkers.clickhouse.connection.Connection`."""
    literal = "'" + columns.replace("\\", "\\\\").replace("'", "\\'") + "'"
    try:
        conn.command(f"DESCRIBE TABLE null({literal})")
        conn.command(f"EXPLAIN AST {statement}")
    except ServerError as exc:
        text = str(exc)
        detail = (text.partition("DB::Exception: ")[2] or text).splitlines()[0]
        detail = detail.partition(" (version ")[0].removesuffix(f" ({exc.name})")
        return f"{exc.name or 'error'} ({exc.code}): {detail[:300]}"
    return None
