"""The daemon's side of a sharded cluster: spooled batches split into their shards' parts.

A batch of a pipeline with a ``sharding_key`` is spooled whole, as every batch is (its
records are safe, its source's position saved), and handed here. The :class:`Splitter`
reads the table's columns from ClickHouse once (from any shard that answers: the key's
fields are typed by them), binds the key, and on its own thread replaces each whole
batch in the spool by one part per shard (:meth:`~chworkers.daemon.spool.Spool.replace`;
:mod:`chworkers.daemon.shardsplit` decides which records go where); records whose key
cannot be read go to the dead letters. Each part then goes on to be inserted into its
shard alone, so a shard that is down holds back only its own parts.

A broker's batch (kept in the spool's memory tier, not on disk) is split there the same
way; it is acknowledged to its broker once all its parts are confirmed
(:mod:`chworkers.daemon.brokergroups`, told of each split through ``on_split``), and a
batch all of whose records were dead-lettered becomes one empty part, confirmed without
an insert, so that its messages are acknowledged all the same.

Until the columns are known (ClickHouse unreachable, the table not created yet) whole
batches wait here, on disk (a broker's in memory), and :meth:`Splitter.problems` says why; intake goes on.
Batches of pipelines without a key, parts already split (replayed after a restart), and
everything when the cluster has one shard, pass straight through.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from chworkers.backoff import capped_backoff
from chworkers.clickhouse.cluster import Cluster
from chworkers.clickhouse.dedup import shard_token
from chworkers.clickhouse.sharding import BoundShardingKey, ShardingKey, ShardRouter
from chworkers.daemon.batchfile import SpooledBatch
from chworkers.daemon.deadletter import DeadLetters
from chworkers.daemon.keycolumns import Column
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.daemon.shardsplit import Split, random_part, split_records
from chworkers.daemon.spool import PartSpec, Spool
from chworkers.errors import ChworkersError, ConfigError, SpoolCorruptError
from chworkers.wording import plural

__all__ = ["Splitter"]

log = logging.getLogger(__name__)

#: Reads a table's columns (from whichever shard answers); raises when it cannot.
Describe = Callable[[str], Sequence[Column]]


class Splitter:
    """Splits the keyed pipelines' spooled batches and hands the parts to ``release``."""

    def __init__(
        self,
        pipelines: Sequence[PipelineSettings],
        cluster: Cluster,
        spool: Spool,
        release: Callable[[SpooledBatch], None],
        describe: Describe,
        *,
        dead_letters: DeadLetters | None = None,
        on_split: Callable[[SpooledBatch, Sequence[SpooledBatch]], None] | None = None,
        initial_backoff: float = 0.5,
        max_backoff: float = 10.0,
    ) -> None:
        self.cluster = cluster
        self.router = ShardRouter(cluster)
        self.spool = spool
        self._release = release
        self._describe = describe
        self._dead_letters = dead_letters
        self._on_split = on_split
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._keys: dict[str, ShardingKey] = {}
        if len(cluster) > 1:
            self._keys = {p.name: k for p in pipelines if (k := p.key) is not None}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)  # a batch was split
        self._waiting: collections.OrderedDict[int, SpooledBatch] = collections.OrderedDict()
        self._columns: dict[str, Sequence[Column]] = {}
        self._bound: dict[tuple[str, str], BoundShardingKey] = {}
        # table -> (attempts, since, error) while its columns cannot be had or used
        self._trouble: dict[str, tuple[int, float, str]] = {}
        self._splitting = False
        self._stopped = False
        #: Whole batches whose unreadable records are in the dead letters already, while
        #: their parts wait to be spooled (the splitter's thread only): a split tried
        #: again does not write them again.
        self._lettered: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="chworkers-split", daemon=True)

    def __repr__(self) -> str:
        with self._lock:
            return f"<Splitter: {len(self.cluster)} shards, {len(self._waiting)} batches to split>"

    def start(self) -> None:
        if self._keys:
            self._thread.start()

    def stop(self) -> None:
        """Stop splitting; batches not split stay whole in the spool for the next start."""
        with self._lock:
            self._stopped = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def retry_now(self) -> None:
        """Read the columns again at once (SIGHUP: the table may have been fixed)."""
        with self._lock:
            self._columns.clear()
            self._bound.clear()
            self._wake.notify_all()

    def offer(self, batch: SpooledBatch) -> None:
        """A spooled batch: on at once, or once split into its parts."""
        if batch.pipeline not in self._keys or "shard" in batch.meta:
            self._release(batch)
            return
        with self._lock:
            self._waiting[batch.seq] = _described(batch)
            self._wake.notify_all()

    def waiting(self) -> int:
        """Whole batches not split yet."""
        with self._lock:
            return len(self._waiting) + (1 if self._splitting else 0)

    def wait_split(self, timeout: float) -> bool:
        """Up to ``timeout`` for every whole batch to be split (True once none waits)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._waiting or self._splitting:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._done.wait(left)
        return True

    def problems(self) -> list[str]:
        """Why batches wait to be split (for health): columns not read, or a key the
        table's columns cannot take."""
        now = time.monotonic()
        with self._lock:
            counts = collections.Counter(b.table for b in self._waiting.values())
            return [
                f"table {table}: {plural(counts[table], 'batch')} waiting to be split by shard "
                f"({plural(attempts, 'attempt')} in {now - since:.0f} s): {error}"
                for table, (attempts, since, error) in sorted(self._trouble.items())
                if counts[table]
            ]

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        rounds = 0
        while True:
            with self._lock:
                while not self._waiting and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
                todo = list(self._waiting.values())
            progressed = False
            blocked: set[str] = set()
            for batch in todo:
                if batch.table in blocked:
                    continue  # in order: a table's later batches wait behind its first
                if not self._begin():
                    return
                try:
                    done = self._split_one(batch)
                except Exception:  # never lose the thread; the batch stays whole
                    log.exception("splitting batch %d by shard failed", batch.seq)
                    done = False
                with self._lock:
                    self._splitting = False
                    if done:
                        self._waiting.pop(batch.seq, None)
                        self._done.notify_all()
                if done:
                    progressed = True
                else:
                    blocked.add(batch.table)
            rounds = 0 if progressed else rounds + 1
            if not progressed:
                with self._lock:
                    self._wake.wait(capped_backoff(self.initial_backoff, rounds, self.max_backoff))

    def _begin(self) -> bool:
        """Mark a split as under way; False once stopped."""
        with self._lock:
            self._splitting = not self._stopped
            return self._splitting

    def _split_one(self, batch: SpooledBatch) -> bool:
        """Split one whole batch; False when it must wait (its columns, the disk)."""
        key = self._keys[batch.pipeline]
        bound = None if key.is_random else self._bind(batch.table, key)
        if bound is None and not key.is_random:
            return False
        try:
            full = self.spool.load(batch)  # from its file, or the memory tier (a broker's)
        except SpoolCorruptError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError):
                log.warning("batch %d cannot be read for its split yet: %s", batch.seq, exc)
                return False
            log.error("batch %d cannot be read back from the spool: %s", batch.seq, exc)
            return True
        if bound is None:
            split = Split(
                (random_part(full.payload, rows=full.rows, token=full.token, router=self.router),)
            )
        else:
            split = split_records(
                full.payload,
                format=full.format,
                token=full.token,
                key=bound,
                columns=self._columns[batch.table],
                router=self.router,
            )
        if split.rejected and self._dead_letters is not None and batch.seq not in self._lettered:
            self._dead_letters.write_errors(
                full.table,
                list(split.rejected),
                reason="sharding_key",
                pipeline=full.pipeline,
                batch=full.token,
            )
            self._lettered.add(batch.seq)
        specs = split.parts
        if not specs and "broker" in full.meta:
            # Nothing to insert, yet its messages are acknowledged only by a confirmed
            # batch: an empty part, which the dispatcher confirms without an insert.
            specs = (PartSpec(b"", 0, shard_token(full.token, 0), {"shard": 0}),)
        try:
            parts = self.spool.replace(full, specs)
        except ChworkersError as exc:
            log.warning("batch %d: its parts cannot be spooled yet: %s", batch.seq, exc)
            return False  # tried again later: its dead letters are written already
        self._lettered.discard(batch.seq)
        if self._on_split is not None:
            self._on_split(full, parts)
        for part in parts:
            self._release(part)
        return True

    def _bind(self, table: str, key: ShardingKey) -> BoundShardingKey | None:
        with self._lock:
            bound = self._bound.get((table, key.expression))
            columns = self._columns.get(table)
        if bound is not None:
            return bound
        try:
            if columns is None:
                columns = list(self._describe(table))
                if not columns:
                    raise ConfigError(f"table {table} does not exist (yet)", key="table")
            bound = key.bind(_types(columns))
        except Exception as exc:
            self._note(table, exc)
            return None
        with self._lock:
            self._columns[table] = columns
            self._bound[(table, key.expression)] = bound
            if self._trouble.pop(table, None) is not None:
                log.info("table %s: its columns are known; its batches are split by shard", table)
        return bound

    def _note(self, table: str, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            attempts, since, last = self._trouble.get(table, (0, time.monotonic(), ""))
            self._trouble[table] = (attempts + 1, since, error)
        if error != last:
            level = logging.ERROR if isinstance(exc, ConfigError) else logging.WARNING
            log.log(
                level,
                "table %s: batches wait to be split by shard (kept in the spool): %s",
                table,
                error,
            )


def _described(batch: SpooledBatch) -> SpooledBatch:
    """Only the batch's description stays in memory; its records are on disk."""
    return dataclasses.replace(batch, payload=b"") if batch.payload else batch


def _types(columns: Sequence[Column]) -> Mapping[str, str]:
    return {c.name: c.type for c in columns}
