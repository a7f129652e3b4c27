"""ClickHouse's asynchronous insert queue, in the endpoint: entries gathered per key,
flushed together when their busy timeout passes or they are big or many enough.

As ``AsynchronousInsertQueue`` (``src/Interpreters/AsynchronousInsertQueue.cpp``):
entries wait under a :class:`Key` (the insert's statement, format, database and the
settings in effect, but not its ``insert_deduplication_token``); a key's batch is flushed
when its deadline passes (``async_insert_busy_timeout_max_ms``, or with
``async_insert_use_adaptive_busy_timeout`` a timeout between ``..._min_ms`` and
``..._max_ms`` that grows while inserts come faster than the minimum and shrinks when they
stop), when its data reaches ``async_insert_max_data_size`` or when it holds
``async_insert_max_query_number`` entries (only while deduplication is on, as there).
A flush runs on a thread of a small pool; the callback given to the queue writes the
batch (:mod:`chworkers.embedded.asyncflush`) and must finish every entry. The queue
lives in memory: entries not flushed when the process dies are lost, as on a server
(their clients, if they waited, got no answer).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from chworkers.embedded import asyncdedup, blockids
from chworkers.embedded.exceptions import clickhouse_error
from chworkers.errors import ServerError

log = logging.getLogger(__name__)

TIMEOUT_EXCEEDED = (159, "TIMEOUT_EXCEEDED")


@dataclass(frozen=True)
class Key:
    """What entries must share to be flushed as one insert: ClickHouse keys them by the
    statement and every setting changed for it, here the request's own (its URL's, its
    SETTINGS clause's and its session's SETs), not the values a connection reused from
    earlier requests was set back to."""

    database: str
    statement: str
    fmt: str
    #: The request's URL settings (the statement holds its SETTINGS clause).
    settings: tuple[tuple[str, str], ...]
    #: A session's SET statements, in order (they are its settings too).
    session_sets: tuple[bytes, ...] = ()

    @property
    def settings_dict(self) -> dict[str, str]:
        return dict(self.settings)


@dataclass(frozen=True)
class Limits:
    """The flush settings of a key (its entries' settings: they are part of the key)."""

    busy_max_ms: int = 200
    busy_min_ms: int = 50
    adaptive: bool = True
    increase_rate: float = 0.2
    decrease_rate: float = 0.2
    max_data_size: int = 10 << 20
    max_query_number: int = 450
    deduplicate: bool = True


@dataclass(eq=False)
class Entry:
    """One client's insert, waiting in the queue."""

    data: bytes
    token: str
    query_id: str
    created: float = field(default_factory=time.time)
    rows: int = 0
    nbytes: int = 0
    error: ServerError | None = None
    #: The data's length (the data itself is let go once the entry is finished).
    size: int = 0
    _done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.size = len(self.data)

    def block_id(self, fmt: str) -> str:
        """What deduplicates the entry: its token (hashed as chDB names a synchronous
        insert's token in the table's log), else a hash of its data."""
        if self.token:
            return blockids.token_hash(self.token)
        return "data:" + hashlib.sha256(fmt.encode() + b"\0" + self.data).hexdigest()

    def legacy_id(self, fmt: str) -> str:
        """The id session 7's endpoint recorded for such an entry."""
        return asyncdedup.legacy_id(self.token, fmt, self.data)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def finish(self, rows: int = 0, nbytes: int = 0) -> None:
        if not self._done.is_set():
            self.rows, self.nbytes = rows, nbytes
            self.data = b""
            self._done.set()

    def fail(self, error: ServerError) -> None:
        if not self._done.is_set():
            self.error = error
            self.data = b""
            self._done.set()

    def wait(self, timeout: float) -> None:
        """Until the entry is flushed; raises its error, or TIMEOUT_EXCEEDED."""
        if not self._done.wait(timeout):
            raise clickhouse_error(
                TIMEOUT_EXCEEDED,
                f"Wait for async insert timeout ({int(timeout * 1000)} ms) exceeded",
            )
        if self.error is not None:
            raise self.error


@dataclass(eq=False)
class _Batch:
    key: Key
    limits: Limits
    deadline: float
    timeout_ms: int
    entries: list[Entry] = field(default_factory=list)
    size: int = 0
    flushed: threading.Event = field(default_factory=threading.Event)


Flush = Callable[[Key, Limits, list[Entry]], None]


class AsyncInsertQueue:
    """Pending batches by key; one thread watches deadlines, a pool flushes."""

    def __init__(
        self,
        flush: Flush,
        threads: int = 4,
        on_push: Callable[[], None] | None = None,
        on_flush: Callable[[], None] | None = None,
    ) -> None:
        self._flush = flush
        self._on_push = on_push
        self._on_flush = on_flush
        self._cond = threading.Condition()
        self._batches: dict[Key, _Batch] = {}
        self._busy_timeout_ms: int | None = None
        self._last_insert: float | None = None
        self._flush_times: tuple[float | None, float | None] = (None, None)
        self._closed = False
        self._running: set[_Batch] = set()
        self.flushes_total = 0
        self.entries_total = 0
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="chworkers-async-flush")
        self._watcher = threading.Thread(
            target=self._watch, name="chworkers-async-deadlines", daemon=True
        )
        self._watcher.start()

    def __repr__(self) -> str:
        with self._cond:
            entries = sum(len(b.entries) for b in self._batches.values())
            return f"<AsyncInsertQueue {len(self._batches)} keys, {entries} entries pending>"

    def pending(self) -> list[tuple[Key, list[Entry], float]]:
        """The batches waiting: key, entries, first entry's wall time (for the system
        table view)."""
        with self._cond:
            return [
                (b.key, list(b.entries), b.entries[0].created if b.entries else time.time())
                for b in self._batches.values()
            ]

    def push(self, key: Key, limits: Limits, entry: Entry) -> None:
        """Queue ``entry``; flush its batch at once if it is now full enough."""
        full: _Batch | None = None
        with self._cond:
            if self._closed:
                raise clickhouse_error(
                    TIMEOUT_EXCEEDED, "The asynchronous insert queue is shutting down"
                )
            now = time.monotonic()
            timeout_ms = self._timeout_ms(limits, now)
            batch = self._batches.get(key)
            if batch is None:
                batch = _Batch(key, limits, now + timeout_ms / 1000, timeout_ms)
                self._batches[key] = batch
            batch.entries.append(entry)
            batch.size += len(entry.data)
            self.entries_total += 1
            enough_queries = limits.deduplicate and len(batch.entries) >= limits.max_query_number
            if batch.size >= limits.max_data_size or enough_queries or self._stale(limits, now):
                full = self._batches.pop(key)
            self._last_insert = now
            self._busy_timeout_ms = timeout_ms
            self._cond.notify()
        if self._on_push is not None:
            self._on_push()
        if full is not None:
            self._submit(full)

    def _timeout_ms(self, limits: Limits, now: float) -> int:
        """The busy timeout for a new batch, as ``getBusyWaitTimeoutMs``."""
        max_ms = max(1, limits.busy_max_ms)
        if not limits.adaptive:
            return max_ms
        min_ms = min(max(limits.busy_min_ms, 1), max_ms)
        current = self._busy_timeout_ms if self._busy_timeout_ms is not None else min_ms

        def norm(ms: int) -> int:
            return min(max(ms, min_ms), max_ms)

        t1, t2 = self._flush_times
        if self._last_insert is None or t1 is None or t2 is None:
            return norm(current)
        if self._last_insert + min_ms / 1000 > now:  # frequent inserts: wait longer
            return norm(max(int(current * (1 + limits.increase_rate)), current + 1))
        decreased = min(int(current / (1 + limits.decrease_rate)), current - 1)
        if self._last_insert + decreased / 1000 < now and t1 + decreased / 1000 < t2:
            return norm(decreased)
        return norm(current)

    def _stale(self, limits: Limits, now: float) -> bool:
        """Inserts stopped for longer than the maximum timeout: flush at once."""
        t1, t2 = self._flush_times
        if not limits.adaptive or self._last_insert is None or t1 is None or t2 is None:
            return False
        max_s = limits.busy_max_ms / 1000
        return self._last_insert + max_s < now and t1 + max_s < t2

    def _watch(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    due = [b for b in self._batches.values() if b.deadline <= now]
                    if due:
                        break
                    nearest = min((b.deadline for b in self._batches.values()), default=None)
                    self._cond.wait(None if nearest is None else max(0.0, nearest - now))
                for batch in due:
                    del self._batches[batch.key]
            for batch in due:
                self._submit(batch)

    def _submit(self, batch: _Batch) -> None:
        with self._cond:
            self._running.add(batch)
        try:
            self._pool.submit(self._run, batch)
        except RuntimeError:  # the pool is shut down: run it here
            self._run(batch)

    def _run(self, batch: _Batch) -> None:
        try:
            self._flush(batch.key, batch.limits, batch.entries)
        except ServerError as err:
            log.warning(
                "flushing %d asynchronous inserts into %s failed: %s",
                len(batch.entries),
                batch.key.statement,
                err.message,
            )
            for entry in batch.entries:
                entry.fail(err)
        except Exception as exc:  # a bug: every waiting client still gets an answer
            log.exception("flushing %d asynchronous inserts failed", len(batch.entries))
            bug = clickhouse_error((1001, "STD_EXCEPTION"), f"Internal error: {exc!r}")
            for entry in batch.entries:
                entry.fail(bug)
        finally:
            with self._cond:
                self.flushes_total += 1
                self._flush_times = (self._flush_times[1], time.monotonic())
            try:
                if self._on_flush is not None:
                    self._on_flush()
            except Exception:  # a bug in the callback: flush_all must still return
                log.exception("the asynchronous insert queue's on_flush callback failed")
            finally:
                with self._cond:
                    self._running.discard(batch)
                batch.flushed.set()

    def flush_all(self, tables: Callable[[Key], bool] | None = None) -> None:
        """Flush the batches (of the keys ``tables`` accepts) now and wait for them
        (``SYSTEM FLUSH ASYNC INSERT QUEUE``)."""
        with self._cond:
            chosen = [b for b in self._batches.values() if tables is None or tables(b.key)]
            for batch in chosen:
                del self._batches[batch.key]
            # As ClickHouse's flushAll, which waits for every flush under way too.
            running = list(self._running) if tables is None else []
        for batch in chosen:
            self._submit(batch)
        for batch in chosen + running:
            batch.flushed.wait()

    def close(self, flush: bool = True) -> None:
        """Stop: flush what waits (or fail it), and wait for running flushes."""
        if flush:
            self.flush_all()
        with self._cond:
            self._closed = True
            left = list(self._batches.values())
            self._batches.clear()
            self._cond.notify_all()
        gone = clickhouse_error(TIMEOUT_EXCEEDED, "Wait for async insert timeout exceeded")
        for batch in left:
            for entry in batch.entries:
                entry.fail(gone)
        self._watcher.join()
        self._pool.shutdown(wait=True)
