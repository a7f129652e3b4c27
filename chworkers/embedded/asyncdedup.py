"""Deduplication of asynchronous inserts, entry by entry.

A flush writes many clients' entries as one insert, so the table's own deduplication
(one block id per insert) cannot tell a replayed entry from a new one. ClickHouse gives
each entry of an asynchronous insert its own block id (its ``insert_deduplication_token``,
or a hash of its data) and drops, before the part is written, the entries whose id the
table has seen within its deduplication window, and the repeats within the flush
(``DeduplicationInfo`` in ``src/Interpreters/InsertDeduplication.cpp``).

chDB's engine cannot be asked for that, so the endpoint keeps the ids itself, per table
(by the table's storage directory, so a table dropped and created again starts afresh),
in ``<data>/chworkers_async_dedup/<dir>.log``: the last ``non_replicated_deduplication_window``
ids, appended and fsync'd after each flush's part is written. A table that does not
deduplicate (window 0, a Memory table, ...) keeps none, as in ClickHouse. These ids are
apart from the table's own log: a synchronous insert's token does not drop an
asynchronous entry with the same token, nor the reverse (the way Replicated tables kept
``blocks`` and ``async_blocks`` apart before 26.x unified them).

The one window: the endpoint killed after a flush's part is written and before its ids
are (the fsync of a few lines), those entries are not known; their clients got no
answer, and their retries land a second time.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import deque
from pathlib import Path

log = logging.getLogger(__name__)

_WINDOW = re.compile(r"\bnon_replicated_deduplication_window\s*=\s*(\d+)")
_REPLICATED_ASYNC_WINDOW = 10000  # replicated_deduplication_window_for_async_inserts


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

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.ids: deque[str] = deque()
        self.known: dict[str, int] = {}
        self.lines = 0
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line:
                    self._add(line)
                    self.lines += 1

    def _add(self, block_id: str) -> None:
        self.ids.append(block_id)
        self.known[block_id] = self.known.get(block_id, 0) + 1

    def trim(self, size: int) -> None:
        while len(self.ids) > size:
            old = self.ids.popleft()
            left = self.known[old] - 1
            if left:
                self.known[old] = left
            else:
                del self.known[old]


class AsyncDedup:
    """The block ids of recent asynchronous entries, per table, kept on disk.

    A lock per table (its ids and its file): flushes into different tables check and
    record in parallel, each waiting only for its own table's fsync. The dictionary of
    tables has a lock of its own, held only to find or add a table.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._tables: dict[str, _TableIds] = {}
        self._lock = threading.Lock()

    def _table(self, storage: str) -> _TableIds:
        with self._lock:
            table = self._tables.get(storage)
            if table is None:
                name = re.sub(r"[^A-Za-z0-9_.-]", "_", storage.rstrip("/").rsplit("/", 1)[-1])
                table = _TableIds(self.directory / f"{name or 'table'}.log")
                self._tables[storage] = table
            return table

    def seen(self, storage: str, size: int, block_id: str) -> bool:
        """Whether the table (its storage directory) has had ``block_id`` lately."""
        if size <= 0:
            return False
        table = self._table(storage)
        with table.lock:
            table.trim(size)
            return block_id in table.known

    def record(self, storage: str, size: int, block_ids: list[str]) -> None:
        """Remember ``block_ids`` (a flush's part is written); durable when this returns."""
        if size <= 0 or not block_ids:
            return
        table = self._table(storage)
        with table.lock:
            for block_id in block_ids:
                table._add(block_id)
            table.trim(size)
            self.directory.mkdir(parents=True, exist_ok=True)
            if table.lines + len(block_ids) > 2 * size + 100:
                self._rewrite(table)
            else:
                with open(table.path, "a") as out:
                    out.write("".join(f"{b}\n" for b in block_ids))
                    out.flush()
                    os.fsync(out.fileno())
                table.lines += len(block_ids)

    def _rewrite(self, table: _TableIds) -> None:
        tmp = table.path.with_name(table.path.name + ".tmp")
        with open(tmp, "w") as out:
            out.write("".join(f"{b}\n" for b in table.ids))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, table.path)
        table.lines = len(table.ids)
