"""A flush of asynchronous inserts into several partitions, made one recoverable step.

chDB writes an insert into several partitions as a part per partition, each committed
on its own (renamed into place, its block id ``<partition>_<token hash>`` logged), one
after the other. A flush stopped in between (the endpoint killed, or a part's write
failing) leaves some partitions written; chDB's log then holds the flush's token, so
the flush would count as written and the other partitions' rows be lost.

So a flush into several partitions of a table that keeps ids first writes its rows
(``Native``, fsync'd) beside its pending ids (:func:`chworkers.embedded.asyncdedup.flush_file`),
and deletes them once its ids are committed. A flush left with its rows is completed
from them with its own token: chDB drops the partitions its log already has and writes
the others, as a server's retry of an insert with a token does. That happens at the
next start, before any request (:func:`complete_at_start`), and, for one whose insert
failed midway, at the next flush into the table; meanwhile its ids count, so its
clients' retries are dropped. A flush into one partition keeps no rows: its one part
is there or not, which chDB's log tells (:mod:`chworkers.embedded.asyncdedup`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from chworkers.embedded import queries
from chworkers.embedded.asyncdedup import AsyncDedup
from chworkers.embedded.asyncrows import flush_files, flush_token
from chworkers.embedded.asynctarget import Target, targets
from chworkers.embedded.blockids import live_partitions
from chworkers.embedded.engine import Engine, close_quietly
from chworkers.embedded.queries import quote_ident, quote_literal
from chworkers.errors import ServerError

log = logging.getLogger(__name__)

#: The settings of a flush's insert into a table that keeps ids: deduplicated by its
#: own token (unique), so chDB's log records the flush's parts.
LOGGED_SETTINGS = {
    "insert_deduplicate": "1",
    "deduplicate_insert": "enable",
    "deduplicate_insert_select": "enable_even_for_bad_queries",
}
#: A test hook, off by default: the endpoint SIGKILLs itself in a flush with ids, at
#: ``before-insert`` (its ids and rows on disk, no part yet) or ``between-parts`` (as
#: soon as the first of its parts is committed, while chDB writes the others)
#: (tests/faults/test_fault_async_flush_partitions.py).
KILL_FLUSH_ENV = "CHWORKERS_EMBEDDED_TEST_KILL_FLUSH"


def one_block(rows: int) -> dict[str, str]:
    """Settings that make an insert of ``rows`` rows one block (the token's block
    number 0, a part per partition)."""
    return {
        "max_insert_block_size": str(rows),
        "min_insert_block_size_rows": str(rows),
        "min_insert_block_size_bytes": "0",
        "max_block_size": str(max(rows, 1)),
    }


def rows_to_keep(conn: Any, facts: Target, tmp: str, flush_id: str) -> tuple[str, bytes] | None:
    """The flush's id and its rows in ``Native`` if it writes several partitions of the
    table; None for one partition (or a table without a directory)."""
    if not facts.partition_key or not Path(facts.storage).is_absolute():
        return None
    try:
        res = queries.run(conn, f"SELECT uniqExact(tuple({facts.partition_key})) FROM {tmp}")
        if int(res.bytes().strip() or b"0") <= 1:
            return None
    except (ServerError, ValueError):  # cannot tell: keep them
        log.debug("counting a flush's partitions failed", exc_info=True)
    names = ", ".join(quote_ident(c) for c in facts.stored)
    return flush_id, bytes(queries.run(conn, f"SELECT {names} FROM {tmp}", "Native").bytes())


def complete_unfinished(conn: Any, dedup: AsyncDedup, facts: Target) -> int:
    """Write what the table's unfinished flushes did not: if chDB's log of the table
    lacks some of a flush's partitions, the flush again from its rows, with its token,
    so chDB writes only those; how many were completed. A failure is logged, and the
    flush stays unfinished (its ids count)."""
    done = 0
    for flush, path in dedup.unfinished(facts.storage, facts.window):
        try:
            rows = _complete(conn, facts, flush, path)
        except (ServerError, ValueError) as exc:
            log.error(
                "%s.%s: completing an unfinished flush of asynchronous inserts from %s "
                "failed (tried again at the next flush into the table and at each start): %s",
                facts.database,
                facts.table,
                path,
                exc.message if isinstance(exc, ServerError) else exc,
            )
            continue
        if rows:
            log.warning(
                "%s.%s: an unfinished flush of asynchronous inserts (%d rows) is "
                "completed: the partitions it had not written are now",
                facts.database,
                facts.table,
                rows,
            )
        dedup.commit(facts.storage, facts.window, flush, [])
        done += 1
    return done


def _complete(conn: Any, facts: Target, flush: str, path: Path) -> int:
    """Write the partitions of the flush that chDB's log does not have; its rows if it
    wrote them, 0 if they were all there."""
    source = f"file({quote_literal(str(path))}, 'Native')"
    res = queries.run(
        conn,
        f"SELECT count(), uniqExact(tuple({facts.partition_key or 'tuple()'})) FROM {source}",
    )
    rows, partitions = (int(v) for v in res.bytes().split())
    if len(live_partitions(Path(facts.storage), facts.window, flush)) >= partitions:
        return 0  # every part is there (a view's error came after them)
    res = queries.run(conn, f"DESCRIBE TABLE {source}", "JSONCompactEachRow")
    names = ", ".join(quote_ident(str(json.loads(row)[0])) for row in res.bytes().splitlines())
    flush_id = path.stem.removeprefix("chworkers_async_flush_")
    settings = {
        **LOGGED_SETTINGS,
        **one_block(rows),
        "insert_deduplication_token": flush_token(flush_id),
        "max_partitions_per_insert_block": "0",  # its parts were accepted once
    }
    queries.apply_settings(conn, settings)
    target = f"{quote_ident(facts.database)}.{quote_ident(facts.table)}"
    queries.run(conn, f"INSERT INTO {target} ({names}) SELECT {names} FROM {source}")
    return rows


def complete_at_start(engine: Engine, dedup: AsyncDedup) -> int:
    """At start, before any request: complete the flushes a kill left unfinished, and
    delete the rows of flushes that never began (killed before their ids were
    written); how many flushes were completed."""
    try:
        conn = engine.connect()
    except ServerError as err:
        log.error("cannot complete unfinished flushes of asynchronous inserts: %s", err.message)
        return 0
    done = 0
    try:
        res = queries.run(
            conn,
            "SELECT database, name, data_paths[1] FROM system.tables "
            "WHERE engine LIKE '%MergeTree' AND notEmpty(data_paths)",
            "JSONCompactEachRow",
        )
        for line in res.bytes().splitlines():
            database, table, path = json.loads(line)
            files = flush_files(Path(path)) if Path(path).is_absolute() else {}
            if not files:
                continue
            facts = targets.get(conn, database, table)
            unfinished = {flush for flush, _ in dedup.unfinished(facts.storage, facts.window)}
            for flush, rows in files.items():
                if flush not in unfinished:
                    rows.unlink(missing_ok=True)
            if unfinished:
                done += complete_unfinished(conn, dedup, facts)
    except ServerError as err:  # the endpoint still starts; tried again at each flush
        log.error("completing unfinished flushes of asynchronous inserts failed: %s", err.message)
    finally:
        close_quietly(conn)
    return done


def test_hook(storage: str) -> None:
    """:data:`KILL_FLUSH_ENV`'s kill, if asked for (after the flush's ids and rows are
    on disk, before its insert)."""
    point = os.environ.get(KILL_FLUSH_ENV)
    if point == "before-insert":
        os.kill(os.getpid(), signal.SIGKILL)
    elif point == "between-parts" and Path(storage).is_absolute():
        table_dir = Path(storage)
        before = set(os.listdir(table_dir))

        def watch() -> None:
            while True:
                for entry in os.scandir(table_dir):
                    if (
                        entry.name not in before
                        and not entry.name.startswith(("tmp", "delete_tmp"))
                        and entry.is_dir()
                    ):
                        os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.0001)

        threading.Thread(target=watch, name="chworkers-test-kill", daemon=True).start()
