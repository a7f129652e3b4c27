"""Writing one batch of asynchronous inserts into its table: one insert, one part.

As ClickHouse's ``processData``: each entry's data is parsed on its own, so an entry
that does not parse fails alone (its client gets its error) and the others go on; the
entries whose block id the table has seen lately, or that repeat one of this flush,
are dropped (:mod:`chworkers.embedded.asyncdedup`); what is left is written by one
insert, whose error (a constraint, too many parts, a view's) is every remaining entry's.

chDB has no way to insert several parsed blocks as one, so each entry is parsed into a
temporary ``Memory`` table of the target's structure (``CREATE TEMPORARY TABLE ... AS
target``: its defaults computed as the target would), and the flush is
``INSERT INTO target (cols) SELECT cols FROM that table``: one plain query (it raises
what the table throws), with the query's deduplication off (the entries were
deduplicated one by one; two flushes of equal rows are not duplicates).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from chworkers.embedded import blockids, queries, sql, streaming, tablerisk
from chworkers.embedded.asynccomplete import (
    LOGGED_SETTINGS,
    complete_unfinished,
    one_block,
    rows_to_keep,
    test_hook,
)
from chworkers.embedded.asyncdataids import data_block_ids, hashed_columns, without
from chworkers.embedded.asyncdedup import AsyncDedup
from chworkers.embedded.asynclog import AsyncInsertLog, Row
from chworkers.embedded.asyncqueue import Entry, Key, Limits
from chworkers.embedded.asyncrows import flush_token
from chworkers.embedded.asynctarget import Target, targets
from chworkers.embedded.engine import Engine, close_quietly
from chworkers.embedded.queries import quote_ident
from chworkers.embedded.summary import Stats
from chworkers.errors import ServerError

log = logging.getLogger(__name__)

#: Settings of a key that are the entries' own, or the endpoint's business. The rest
#: (``async_insert`` too: it does nothing to an ``INSERT ... SELECT``) are in effect for
#: the flush, so the table's materialized views see the settings the clients sent.
_NOT_FOR_FLUSH = frozenset(["insert_deduplication_token", "readonly", "database"])
#: The flush's own insert must not deduplicate against other inserts: its entries were,
#: one by one. Into a table that keeps ids it carries a token of its own (unique), so
#: chDB's log records the flush's part: what tells, after a crash, whether it was written.
_FLUSH_SETTINGS = {
    "insert_deduplicate": "0",
    "deduplicate_insert": "disable",
    "deduplicate_insert_select": "disable",
}
#: A test hook, off by default: set to 1 in the endpoint's environment, the process
#: kills itself (SIGKILL) right after a flush's part is written, before its ids are
#: marked committed (tests/faults/test_fault_async_dedup_crash.py).
CRASH_AFTER_PART_ENV = "CHWORKERS_EMBEDDED_TEST_CRASH_AFTER_FLUSH_PART"


def split(statement: str) -> tuple[str, str | None, str]:
    """``INSERT INTO t (a, b) SETTINGS x = 1`` as ``("INSERT INTO t (a, b)", "a, b",
    "SETTINGS x = 1")``: the target, its column list's inside (None without one) and the
    SETTINGS clause ('' without one)."""
    raw = queries.sql_bytes(statement)
    at = sql.infile_at(raw)
    if at is None:
        raise ValueError(f"not an INSERT into a table: {statement!r}")
    head, clause = raw[:at].strip(), raw[at:].strip()
    columns = None
    toks = sql.tokens(head)
    if toks and toks[-1].kind == "punct" and toks[-1].text == b")":
        depth = 0
        for tok in reversed(toks):
            if tok.kind == "punct" and tok.text == b")":
                depth += 1
            elif tok.kind == "punct" and tok.text == b"(":
                depth -= 1
                if depth == 0:
                    columns = head[tok.end : toks[-1].start].decode("utf-8", "surrogateescape")
                    break
    return (
        head.decode("utf-8", "surrogateescape"),
        columns,
        clause.decode("utf-8", "surrogateescape"),
    )


#: Settings the flush's insert sets itself, which a SETTINGS clause of the clients'
#: statement would override (a token there named the flush's parts after the client's,
#: and a crashed flush was then taken for one never written).
_OWN = frozenset(
    ["insert_deduplication_token", "insert_deduplicate", "deduplicate_insert", *_FLUSH_SETTINGS]
)


def flush_clause(clause: str) -> str:
    """The statement's SETTINGS clause for the flush's insert: without the settings the
    flush sets itself (its token and its deduplication)."""
    raw = clause.encode("utf-8", "surrogateescape")
    toks = sql.tokens(raw)
    if not toks or toks[0].upper != "SETTINGS":
        return clause
    items: list[list[sql.Token]] = [[]]
    depth = 0
    for tok in toks[1:]:
        if tok.kind == "punct" and tok.text in (b"(", b"["):
            depth += 1
        elif tok.kind == "punct" and tok.text in (b")", b"]"):
            depth -= 1
        elif depth == 0 and tok.kind == "punct" and tok.text == b",":
            items.append([])
            continue
        items[-1].append(tok)
    kept = [
        raw[item[0].start : item[-1].end].decode("utf-8", "surrogateescape")
        for item in items
        if item and sql.unquote(item[0]) not in _OWN
    ]
    return "SETTINGS " + ", ".join(kept) if kept else ""


def qualified(database: str, statement: str) -> tuple[str, str]:
    """The (database, table) an INSERT statement writes, its database resolved."""
    target = tablerisk.target(statement)
    if target is None:
        raise ValueError(f"not an INSERT into a table: {statement!r}")
    return target[0] or database or "default", target[1]


class Flusher:
    """Writes batches, each on a chDB connection of its own.

    A connection of its own, closed after: the key's settings (a ``compatibility`` among
    them changes hundreds) are put in effect as they were for the clients, and no other
    request ever finds them on its connection.
    """

    def __init__(
        self, engine: Engine, dedup: AsyncDedup, insert_log: AsyncInsertLog | None = None
    ) -> None:
        self.engine = engine
        self.dedup = dedup
        self.insert_log = insert_log
        self._lock = threading.Lock()
        self._tables: dict[tuple[str, str], threading.Lock] = {}

    def _table_lock(self, database: str, table: str) -> threading.Lock:
        """One flush at a time into a table: its entries' ids are checked and recorded
        around its write, as ClickHouse commits a part with its block ids."""
        with self._lock:
            return self._tables.setdefault((database, table), threading.Lock())

    def __call__(self, key: Key, limits: Limits, entries: list[Entry]) -> None:
        flush_id = str(uuid.uuid4())
        rows: list[Row] = []  # system.asynchronous_insert_log's, one per entry
        conn = self.engine.connect()
        try:
            settings = {n: v for n, v in key.settings if n not in _NOT_FOR_FLUSH}
            settings.update(_FLUSH_SETTINGS)
            if key.database:
                queries.run(conn, f"USE {quote_ident(key.database)}")
            for statement in key.session_sets:
                queries.run(conn, statement)
            queries.apply_settings(conn, settings)
            self._write(conn, key, limits, entries, flush_id, rows)
        except ServerError as err:
            if not rows:  # failed before any entry was parsed: every one's error
                rows = [_row(key, e, 0, "FlushError", err.message) for e in entries]
            raise
        finally:
            close_quietly(conn)
            if self.insert_log is not None and rows:
                self.insert_log.add(rows, time.time(), flush_id)

    def _write(
        self,
        conn: Any,
        key: Key,
        limits: Limits,
        entries: list[Entry],
        flush_id: str,
        rows: list[Row],
    ) -> None:
        database, table = qualified(key.database, key.statement)
        with self._table_lock(database, table):
            self._write_locked(conn, key, limits, entries, database, table, flush_id, rows)

    def _write_locked(
        self,
        conn: Any,
        key: Key,
        limits: Limits,
        entries: list[Entry],
        database: str,
        table: str,
        flush_id: str,
        log_rows: list[Row],
    ) -> None:
        _, columns, clause = split(key.statement)
        facts = targets.get(conn, database, table)
        storage, size = (facts.storage, facts.window) if limits.deduplicate else ("", 0)
        if facts.window:  # a flush a failure left unfinished: completed first
            complete_unfinished(conn, self.dedup, facts)
        tmp = quote_ident(f"_chworkers_async_{uuid.uuid4().hex}")
        check = facts.create_staging(conn, tmp)
        cols = f" ({columns})" if columns is not None else ""
        # An entry without a token is named by its parsed block's data hash, as chDB
        # names a synchronous insert's, when the endpoint can compute it (its columns
        # all of fixed width): computed for all of them at once, once they are parsed.
        hashed = hashed_columns(facts, columns) if size else None
        by_data = hashed is not None and not all(e.token for e in entries)
        # Synchronous inserts' ids, as chDB's log of the table holds them now: an entry
        # with one of them is a duplicate too (one block-id store, as ClickHouse).
        synced = (
            blockids.live_hashes(Path(storage), size)
            if size and (by_data or any(e.token for e in entries)) and Path(storage).is_absolute()
            else set()
        )
        kept: list[tuple[Entry, str, Stats]] = []
        in_flush: set[str] = set()
        parsed: list[tuple[Entry, Stats]] = []  # in the staging table, in order
        for entry in entries:
            if not (by_data and not entry.token):
                block_id = entry.block_id(key.fmt)
                if self._duplicate(entry, key.fmt, storage, size, block_id, in_flush, synced):
                    _dropped(key, entry, log_rows)
                    continue
            stats = _parse(conn, key, tmp, cols, clause, entry, check, log_rows)
            if stats is None:
                continue
            parsed.append((entry, stats))
            if not (by_data and not entry.token):
                in_flush.add(block_id)
                kept.append((entry, block_id, stats))
        if by_data and hashed is not None:
            dropped: list[tuple[int, int]] = []  # row ranges of the staging table
            ids = data_block_ids(conn, tmp, hashed, [s.written_rows for _, s in parsed])
            at = 0
            for (entry, stats), block_id in zip(parsed, ids, strict=True):
                first, at = at, at + stats.written_rows
                if entry.token:
                    continue
                if not block_id:  # no rows: nothing to name
                    block_id = entry.block_id(key.fmt)
                if self._duplicate(entry, key.fmt, storage, size, block_id, in_flush, synced):
                    _dropped(key, entry, log_rows)
                    dropped.append((first, at))
                    continue
                in_flush.add(block_id)
                kept.append((entry, block_id, stats))
            if dropped:
                tmp = without(conn, facts, tmp, dropped)
        rows = sum(s.written_rows for _, _, s in kept)
        try:
            if rows:
                ids = [b for _, b, _ in kept]
                self._insert(conn, facts, size, tmp, clause, flush_id, rows, ids)
        except ServerError as err:
            log_rows.extend(
                _row(key, e, s.written_rows, "FlushError", err.message) for e, _, s in kept
            )
            raise
        log_rows.extend(_row(key, e, s.written_rows) for e, _, s in kept)
        for entry, _, stats in kept:
            entry.finish(stats.written_rows, stats.written_bytes)

    def _duplicate(
        self,
        entry: Entry,
        fmt: str,
        storage: str,
        size: int,
        block_id: str,
        in_flush: set[str],
        synced: set[str],
    ) -> bool:
        """Whether the entry repeats one of this flush, a synchronous insert chDB's log
        of the table holds, or an asynchronous one the table had lately."""
        return bool(size) and (
            block_id in in_flush
            or block_id in synced
            or self.dedup.seen(storage, size, block_id, partial(entry.legacy_id, fmt))
        )

    def _insert(
        self,
        conn: Any,
        facts: Target,
        size: int,
        tmp: str,
        clause: str,
        flush_id: str,
        rows: int,
        ids: list[str],
    ) -> None:
        """The flush's one insert, its entries' ids recorded around it."""
        # One block, as the server writes a flush's one chunk: one part per
        # partition, and refused whole (too many partitions) or written whole.
        settings = one_block(rows)
        token = flush_token(flush_id)
        flush = blockids.token_hash(token)
        # The temporary table computed every default as the target would (from
        # the columns each entry sent, EPHEMERAL ones included): its stored
        # columns go into the target's as they are.
        names = ", ".join(quote_ident(c) for c in facts.stored)
        target = f"{quote_ident(facts.database)}.{quote_ident(facts.table)}"
        insert = f"INSERT INTO {target} ({names}) {flush_clause(clause)} SELECT {names} FROM {tmp}"
        if size:
            settings.update(LOGGED_SETTINGS, insert_deduplication_token=token)
        queries.apply_settings(conn, settings)
        if size:
            kept = rows_to_keep(conn, facts, tmp, flush_id)
            self.dedup.begin(facts.storage, size, flush, ids, kept)
            test_hook(facts.storage)
        try:
            queries.run(conn, insert)
        except ServerError as err:
            if size and flush in _live(facts, size):
                self._written_in_part(conn, facts, size, flush, ids, err)
            else:
                self.dedup.abort(facts.storage, size, flush)
            raise
        except BaseException:
            self.dedup.abort(facts.storage, size, flush)
            raise
        if os.environ.get(CRASH_AFTER_PART_ENV) == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        self.dedup.commit(facts.storage, size, flush, ids)

    def _written_in_part(
        self,
        conn: Any,
        facts: Target,
        size: int,
        flush: str,
        ids: list[str],
        err: ServerError,
    ) -> None:
        """The flush's insert failed after some of its parts (a part per partition,
        committed one by one, or a materialized view after them): its ids count, its
        clients get ``err`` and their retries are dropped, and the partitions not
        written are written now from its rows (or at the next flush, or start)."""
        log.warning(
            "%s.%s: a flush of asynchronous inserts failed after writing (some of) its "
            "parts, its inserts count as written: %s",
            facts.database,
            facts.table,
            err.message,
        )
        if not self.dedup.has_rows(facts.storage, size, flush):  # one part: it is there
            self.dedup.commit(facts.storage, size, flush, ids)
            return
        self.dedup.unfinish(facts.storage, size, flush, ids)
        complete_unfinished(conn, self.dedup, facts)


def _parse(
    conn: Any,
    key: Key,
    into: str,
    cols: str,
    clause: str,
    entry: Entry,
    check: bool,
    log_rows: list[Row],
) -> Stats | None:
    """Parse the entry's data into the staging table ``into``; None if it does not
    parse (the entry failed with its error)."""
    stats = Stats()
    try:
        statement = f"INSERT INTO {into}{cols} {clause}"
        streaming.insert(conn, statement, key.fmt, [entry.data], stats, check=check)
    except ServerError as err:  # this entry's data only
        # Logged as ClickHouse does: a client that did not wait sees it only here.
        log.warning("asynchronous insert %s failed: %s", entry.query_id, err.message)
        log_rows.append(_row(key, entry, 0, "ParsingError", err.message))
        entry.fail(err)
        return None
    return stats


def _dropped(key: Key, entry: Entry, log_rows: list[Row]) -> None:
    log.debug("asynchronous insert %s dropped as a duplicate", entry.query_id)
    # Logged Ok, as the server does (its sink drops the rows).
    log_rows.append(_row(key, entry, 0))
    entry.finish()


def _live(facts: Target, size: int) -> set[str]:
    table_dir = Path(facts.storage)
    return blockids.live_hashes(table_dir, size) if table_dir.is_absolute() else set()


def _row(key: Key, entry: Entry, rows: int, status: str = "Ok", exception: str = "") -> Row:
    database, table = qualified(key.database, key.statement)
    return Row(
        created=entry.created,
        query=f"{key.statement} FORMAT {key.fmt}",
        database=database,
        table=table,
        fmt=key.fmt,
        query_id=entry.query_id,
        nbytes=entry.size,
        rows=rows,
        status=status,
        exception=exception,
    )
