"""Deduplication of asynchronous inserts, entry by entry.

A flush writes many clients' entries as one insert, so the table's own deduplication
(one block id per insert) cannot tell a replayed entry from a new one. ClickHouse gives
each entry of an asynchronous insert its own block id (its ``insert_deduplication_token``,
or a hash of its data) and drops, before the part is written, the entries whose id the
table has seen within its deduplication window, and the repeats within the flush
(``DeduplicationInfo`` in ``src/Interpreters/InsertDeduplication.cpp``).

chDB's engine cannot be asked for that, so the endpoint keeps the entries' ids itself,
per table, in ``chworkers_async_dedup.log`` inside the table's own data directory: they
go with the table as its block ids do (``DROP TABLE``/``DATABASE`` removes them with the
directory, ``RENAME`` keeps them, ``TRUNCATE`` resets them: :meth:`AsyncDedup.reset`).
The last ``non_replicated_deduplication_window`` ids are kept; a table that does not
deduplicate (window 0, a Memory table, ...) keeps none, as in ClickHouse. An entry's
token has the id chDB gives a synchronous insert with that token
(:mod:`chworkers.embedded.blockids`), so the two paths name a token alike.

A flush's ids and its part are one step: the ids are written (fsync'd) with a pending
mark naming the flush *before* its part, whose insert carries the flush's own
deduplication token, and a commit (or abort) mark after. A flush left pending by a
crash is resolved when its table is next used: its ids count if chDB's own log of the
table holds the flush's token (the part was committed; the engine logs a block id
before the part is renamed into place, and :mod:`chworkers.embedded.deduplog` drops
the entries of parts that never were), and are forgotten otherwise. A flush into
several partitions (a part each, committed one by one) keeps its rows beside its ids
until its last part (:func:`flush_file`): left pending with them, it is *unfinished*,
its ids count, and :mod:`chworkers.embedded.asynccomplete` writes the partitions it
had not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from chworkers.durable import replace_synced
from chworkers.embedded import blockids
from chworkers.embedded.asyncrows import flush_file, flush_files

log = logging.getLogger(__name__)

#: The ids' file, in the table's data directory.
FILE_NAME = "chworkers_async_dedup.log"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_WINDOW = re.compile(r"\bnon_replicated_deduplication_window\s*=\s*(\d+)")
_REPLICATED_ASYNC_WINDOW = 10000  # replicated_deduplication_window (unified ids, 26.x)
#: How session 7's endpoint named an entry: ``token:`` and the SHA-256 of its token, or
#: ``data:`` and the SHA-256 of its format, a NUL and its bytes.
_LEGACY = ("token:", "data:")


def legacy_id(token: str, fmt: str, data: bytes) -> str:
    """The id session 7's endpoint recorded for an entry (its files hold these, one a
    line): what an entry is also looked up by in a table whose ids have some."""
    if token:
        return "token:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
    return "data:" + hashlib.sha256(fmt.encode() + b"\0" + data).hexdigest()


def window(engine: str, engine_full: str) -> int:
    """How many recent block ids a table keeps (0: it does not deduplicate)."""
    if engine.startswith("Replicated"):
        return _REPLICATED_ASYNC_WINDOW
    if not engine.endswith("MergeTree"):
        return 0
    match = _WINDOW.search(engine_full)
    return int(match.group(1)) if match else 0


class _TableIds:
    """One table's recent ids and its file; its own lock, so one table's fsync never
    holds up another table's flush."""

    def __init__(self, path: Path, table_dir: Path | None, size: int) -> None:
        self.path = path
        self.lock = threading.Lock()
        #: (block id, the flush that wrote it: '' if not known), oldest first.
        self.ids: deque[tuple[str, str]] = deque()
        self.known: dict[str, int] = {}
        #: How many of ``ids`` are session 7's (:func:`legacy_id`).
        self.legacy = 0
        self.lines = 0
        #: The flush between :meth:`AsyncDedup.begin` and its commit or abort.
        self.flushing: str | None = None
        #: Flushes a crash left pending, resolved on load: the file needs a rewrite.
        self.resolved = 0
        #: Flushes whose parts are not all written yet, their rows in a flush file
        #: (:func:`flush_file`): their ids count, and stay pending on disk until
        #: :meth:`AsyncDedup.commit`.
        self.unfinished: set[str] = set()
        #: The flush files there are (:func:`flush_file`), by flush.
        self.files: dict[str, Path] = {}
        self.table_dir = table_dir
        if path.exists():
            self._load(table_dir, size)

    def _load(self, table_dir: Path | None, size: int) -> None:
        pending: dict[str, list[str]] = {}
        for line in self.path.read_text(errors="replace").splitlines():
            if not line:
                continue
            self.lines += 1
            fields = line.split("\t")
            if len(fields) == 3 and fields[0] == "P":
                pending.setdefault(fields[1], []).append(fields[2])
            elif len(fields) == 2 and fields[0] == "C":
                for block_id in pending.pop(fields[1], []):
                    self.add(block_id, fields[1])
            elif len(fields) == 2 and fields[0] == "A":
                pending.pop(fields[1], None)
            else:  # an id recorded whole (a rewrite, or the file of session 7)
                self.add(line)
        if not pending:
            return
        live = blockids.live_hashes(table_dir, size) if table_dir is not None else set()
        files = flush_files(table_dir) if table_dir is not None else {}
        for flush, block_ids in pending.items():
            if flush in files:
                self.files[flush] = files[flush]
                log.warning(
                    "%s: a flush of %d asynchronous inserts into several partitions was "
                    "stopped before its last part: it is completed from its rows",
                    self.path,
                    len(block_ids),
                )
                for block_id in block_ids:
                    self.add(block_id, flush)
                self.unfinished.add(flush)
                continue
            if flush in live:
                log.warning(
                    "%s: a flush of %d asynchronous inserts was written before the endpoint "
                    "stopped, its ids were not marked: they count (retries are dropped)",
                    self.path,
                    len(block_ids),
                )
                for block_id in block_ids:
                    self.add(block_id, flush)
            else:
                log.warning(
                    "%s: a flush of %d asynchronous inserts was never written (the endpoint "
                    "stopped first): its ids are forgotten, so retries land",
                    self.path,
                    len(block_ids),
                )
            self.resolved += 1

    def add(self, block_id: str, flush: str = "") -> None:
        self.ids.append((block_id, flush))
        self.known[block_id] = self.known.get(block_id, 0) + 1
        if block_id.startswith(_LEGACY):
            self.legacy += 1

    def trim(self, size: int) -> None:
        while len(self.ids) > size:
            old, _ = self.ids.popleft()
            if old.startswith(_LEGACY):
                self.legacy -= 1
            left = self.known[old] - 1
            if left:
                self.known[old] = left
            else:
                del self.known[old]

    def append(self, lines: list[str], sync: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as out:
            out.write("".join(f"{line}\n" for line in lines))
            out.flush()
            if sync:
                os.fsync(out.fileno())
        self.lines += len(lines)

    def rewrite(self) -> None:
        """The file as the ids in memory (no pending flush), atomically; each flush's
        ids still marked with it (:meth:`AsyncDedup.release_dropped` needs it)."""
        lines: list[str] = []
        last = ""
        for block_id, flush in self.ids:
            if last and flush != last and last not in self.unfinished:
                lines.append(f"C\t{last}")
            lines.append(f"P\t{flush}\t{block_id}" if flush else block_id)
            last = flush
        if last and last not in self.unfinished:
            lines.append(f"C\t{last}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_synced(self.path, "".join(f"{line}\n" for line in lines).encode())
        self.lines = len(lines)

    def drop_flushes(self, gone: set[str]) -> int:
        """Forget the ids the flushes ``gone`` wrote; how many."""
        kept = [(b, f) for b, f in self.ids if not f or f not in gone]
        dropped = len(self.ids) - len(kept)
        if dropped:
            self.ids = deque()
            self.known = {}
            self.legacy = 0
            for block_id, flush in kept:
                self.add(block_id, flush)
        return dropped


class AsyncDedup:
    """The block ids of recent asynchronous entries, per table, kept on disk.

    ``storage`` is the table's data directory (``data_paths[1]``); a table without one
    keeps its file in ``directory``. A lock per table (its ids and its file): flushes
    into different tables check and record in parallel, each waiting only for its own
    table's fsync. The dictionary of tables has a lock of its own, held only to find,
    load or drop a table.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._tables: dict[str, _TableIds] = {}
        self._lock = threading.Lock()
        #: The files of ids there are (by path): only an insert into one of their tables
        #: can repeat an asynchronous entry's token.
        self._with_ids: set[str] = set()

    def scan(self, store: Path) -> int:
        """At start: which tables under ``store`` have ids; how many."""
        found = {str(path) for path in store.glob(f"*/*/{FILE_NAME}")}
        found.update(str(path) for path in self.directory.glob("*.log"))
        with self._lock:
            self._with_ids.update(found)
        return len(found)

    def has_ids(self, storage: str | None = None) -> bool:
        """Whether the table (any table, without ``storage``) has ids."""
        path = None if storage is None else str(self._path(storage)[0])
        with self._lock:
            return bool(self._with_ids) if path is None else path in self._with_ids

    def _path(self, storage: str) -> tuple[Path, Path | None]:
        table_dir = Path(storage)
        if table_dir.is_absolute() and table_dir.is_dir():
            return table_dir / FILE_NAME, table_dir
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", storage.rstrip("/").rsplit("/", 1)[-1])
        return self.directory / f"{name or 'table'}.log", None

    def _table(self, storage: str, size: int) -> _TableIds:
        with self._lock:
            table = self._tables.get(storage)
            if table is None:
                path, table_dir = self._path(storage)
                table = _TableIds(path, table_dir, size)
                if table.resolved:
                    table.trim(size)
                    table.rewrite()
                self._tables[storage] = table
            return table

    def tables(self) -> int:
        """How many tables' ids are in memory."""
        with self._lock:
            return len(self._tables)

    def seen(
        self,
        storage: str,
        size: int,
        block_id: str,
        legacy: Callable[[], str] | None = None,
    ) -> bool:
        """Whether the table (its storage directory) has had ``block_id`` lately, or
        ``legacy()`` (the entry's :func:`legacy_id`, computed only if the table still
        has ids session 7 recorded: an upgraded endpoint drops what it already had)."""
        if size <= 0:
            return False
        table = self._table(storage, size)
        with table.lock:
            table.trim(size)
            if block_id in table.known:
                return True
            return bool(table.legacy) and legacy is not None and legacy() in table.known

    def begin(
        self,
        storage: str,
        size: int,
        flush: str,
        block_ids: list[str],
        rows: tuple[str, bytes] | None = None,
    ) -> None:
        """Before a flush's part is written: its ids, pending under ``flush`` (the hash
        of its insert's deduplication token), and before them ``rows`` (a flush into
        several partitions: its id and its rows in ``Native``, see :func:`flush_file`);
        on disk when this returns."""
        if size <= 0 or not block_ids:
            return
        table = self._table(storage, size)
        with table.lock:
            if rows is not None and table.table_dir is not None:
                path = flush_file(table.table_dir, rows[0])
                replace_synced(path, rows[1])
                table.files[flush] = path
            table.append([f"P\t{flush}\t{b}" for b in block_ids], sync=True)
            table.flushing = flush

    def unfinished(self, storage: str, size: int) -> list[tuple[str, Path]]:
        """The table's flushes whose parts are not all written (their ids count), and
        their flush files."""
        if size <= 0:
            return []
        table = self._table(storage, size)
        with table.lock:
            return sorted((f, table.files[f]) for f in table.unfinished if f in table.files)

    def has_rows(self, storage: str, size: int, flush: str) -> bool:
        """Whether the flush kept its rows (it writes several partitions)."""
        table = self._table(storage, size)
        with table.lock:
            return flush in table.files

    def unfinish(self, storage: str, size: int, flush: str, block_ids: list[str]) -> None:
        """The flush's insert failed after some of its parts: its ids count from now on,
        and it stays pending on disk (with its rows) until it is completed."""
        if size <= 0 or not block_ids:
            return
        table = self._table(storage, size)
        with self._lock:
            self._with_ids.add(str(table.path))
        with table.lock:
            table.flushing = None
            if flush not in table.unfinished:
                table.unfinished.add(flush)
                for block_id in block_ids:
                    table.add(block_id, flush)

    def commit(self, storage: str, size: int, flush: str, block_ids: list[str]) -> None:
        """The flush's parts are written: its ids count from now on."""
        if size <= 0:
            return
        table = self._table(storage, size)
        with self._lock:
            self._with_ids.add(str(table.path))
        with table.lock:
            table.flushing = None
            if flush in table.unfinished:  # its ids were counted already
                table.unfinished.discard(flush)
            else:
                for block_id in block_ids:
                    table.add(block_id, flush)
            table.trim(size)
            if table.lines + 1 > 3 * size + 100:
                table.rewrite()
            else:
                # Not fsync'd: lost, the flush is resolved from chDB's log at start.
                table.append([f"C\t{flush}"], sync=False)
            _unlink(table.files.pop(flush, None))

    def abort(self, storage: str, size: int, flush: str) -> None:
        """The flush's insert failed: its pending ids never count."""
        if size <= 0:
            return
        table = self._table(storage, size)
        with table.lock:
            if table.flushing == flush:
                table.flushing = None
                table.append([f"A\t{flush}"], sync=False)
                _unlink(table.files.pop(flush, None))

    def release_dropped(self, storage: str, size: int) -> int:
        """Forget the ids of flushes whose parts were all dropped since (``ALTER TABLE
        ... DROP PARTITION`` and the like: chDB's log of the table forgets the dropped
        parts' block ids, the flushes' own among them); how many."""
        table_dir = Path(storage)
        if size <= 0 or not table_dir.is_absolute() or not self.has_ids(storage):
            return 0
        gone = blockids.dropped_hashes(table_dir)
        if not gone:
            return 0
        table = self._table(storage, size)
        with table.lock:
            dropped = table.drop_flushes(gone)
            if dropped:
                table.rewrite()
        return dropped

    def reset(self, storage: str) -> None:
        """Forget the table's ids (it was truncated: its block ids went with its parts)."""
        with self._lock:
            table = self._tables.pop(storage, None)
            path, _ = self._path(storage)
            self._with_ids.discard(str(path))
        if table is not None:
            with table.lock:
                path.unlink(missing_ok=True)
        else:
            path.unlink(missing_ok=True)
        table_dir = Path(storage)
        if table_dir.is_absolute():  # an unfinished flush's rows went with the rest
            for rows in flush_files(table_dir).values():
                rows.unlink(missing_ok=True)

    def forget(self, keep: Callable[[str], bool]) -> int:
        """Drop from memory the tables ``keep`` refuses (tables dropped: their files go
        with their directories) unless a flush is using them; how many."""
        dropped = 0
        with self._lock:
            for storage in list(self._tables):
                table = self._tables[storage]
                if keep(storage) or table.flushing is not None or table.lock.locked():
                    continue
                del self._tables[storage]
                dropped += 1
            self._with_ids = {path for path in self._with_ids if os.path.exists(path)}
        return dropped

    def migrate(self, store: Path) -> int:
        """At start: move the files session 7 kept for every table in ``directory``
        (named by the table's UUID) into their tables' directories under ``store``, and
        delete those of tables dropped since (the disk leak); how many were deleted."""
        deleted = 0
        if not self.directory.is_dir():
            return 0
        for old in sorted(self.directory.glob("*.log")):
            name = old.stem
            if not _UUID.match(name):
                continue  # a table without a UUID directory: its file stays here
            table_dir = store / name[:3] / name
            if table_dir.is_dir() and not (table_dir / FILE_NAME).exists():
                os.replace(old, table_dir / FILE_NAME)
            else:
                old.unlink()
                deleted += 1
        return deleted


def _unlink(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
