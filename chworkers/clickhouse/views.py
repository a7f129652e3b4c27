"""Dependent materialized views: would a replayed insert double their rows?

An insert replayed with the same deduplication token is dropped by its table (when that
table deduplicates, see :func:`chworkers.clickhouse.dedup.check_window`) and, with
``deduplicate_blocks_in_dependent_materialized_views=1`` (which every synchronous insert
carries, :mod:`chworkers.clickhouse.insertmode`), by the tables its materialized views
write to, but only by those that deduplicate too: a view whose target is a plain
MergeTree table with ``non_replicated_deduplication_window = 0`` (the server's default)
gets the replayed rows again. :func:`check` walks the views of an insert's table (and
the views of their targets, down the chain) once per table and process, and warns about
each such target.

The walk reads ``system.tables`` (``dependencies_*``, ``target_database``,
``target_table``); a server without those columns, or a user without access, gets no
warning (logged once at INFO), and the inserts are not affected either way.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator

from chworkers.clickhouse.dedup import Queries, dedup_window
from chworkers.clickhouse.translate import translate_error
from chworkers.errors import TransportError

__all__ = ["check", "undeduplicated_views"]

log = logging.getLogger(__name__)

#: Tables a walk looks at, at most (views of views of views...).
MAX_TABLES = 64

_checked: set[tuple[str, str, str]] = set()
_lock = threading.Lock()

_QUERY = (
    "SELECT engine, engine_full, target_database, target_table, dependencies_database, "
    "dependencies_table FROM system.tables WHERE database = {db:String} AND name = {t:String}"
)


def check(conn: Queries, database: str | None, table: str) -> None:
    """Warn (once per table and process) about dependent views that would double their
    rows on a replay. Never raises."""
    db, _, name = table.rpartition(".")
    db = database or db or conn.config.database or ""
    key = (conn.endpoint, db, name)
    with _lock:
        if key in _checked:
            return
    try:
        if not db:
            db = str(conn.client.command("SELECT currentDatabase()"))
        found = list(undeduplicated_views(conn, db, name))
    except Exception as exc:  # the check is advisory
        if isinstance(translate_error(exc), TransportError):
            return  # the server is unreachable: check again on the next insert
        log.info("could not check the materialized views of %s.%s: %s", db, name, exc)
        found = []
    with _lock:
        if key in _checked:
            return
        _checked.add(key)
    for view, target, engine in found:
        log.warning(
            "materialized view %s (on %s.%s) writes to %s (%s), which does not deduplicate "
            "inserts: non_replicated_deduplication_window is 0, so an insert into %s.%s "
            "replayed after a lost response adds its rows to %s again; create %s with "
            "SETTINGS non_replicated_deduplication_window = 1000 (or use a Replicated engine)",
            view,
            db,
            name,
            target,
            engine,
            db,
            name,
            target,
            target,
        )


def undeduplicated_views(
    conn: Queries, database: str, table: str
) -> Iterator[tuple[str, str, str]]:
    """``(view, target table, target engine)`` for each materialized view fed (directly or
    down a chain of views) by ``database.table`` whose target does not deduplicate."""
    described: dict[tuple[str, str], _Table | None] = {}

    def describe(db: str, name: str) -> _Table | None:
        if (db, name) not in described:
            described[db, name] = _describe(conn, db, name)
        return described[db, name]

    todo = [(database, table)]
    while todo and len(described) <= MAX_TABLES:
        source = describe(*todo.pop(0))
        for view in source.dependents if source is not None else ():
            about = describe(*view)
            if about is None or about.engine != "MaterializedView" or not about.target[1]:
                continue
            if about.target in described:
                continue  # a target seen before (views can share one)
            todo.append(about.target)
            target = describe(*about.target)
            if target is not None and dedup_window(conn, target.engine, target.engine_full) == 0:
                yield ".".join(view), ".".join(about.target), target.engine


@dataclasses.dataclass(frozen=True)
class _Table:
    engine: str
    engine_full: str
    target: tuple[str, str]  # (database, table) a materialized view writes to
    dependents: tuple[tuple[str, str], ...]  # the views that read this table


def _describe(conn: Queries, database: str, table: str) -> _Table | None:
    rows = conn.client.query(_QUERY, parameters={"db": database, "t": table}).result_rows
    if not rows:
        return None
    engine, engine_full, target_db, target, view_dbs, views = rows[0]
    return _Table(
        str(engine),
        str(engine_full),
        (str(target_db), str(target)),
        tuple((str(d), str(v)) for d, v in zip(view_dbs, views, strict=True)),
    )
