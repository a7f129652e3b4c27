"""A synchronous insert whose token an asynchronous entry of its table used lately.

ClickHouse keeps one block-id store per table for both kinds of insert (26.x's unified
ids, :mod:`chworkers.embedded.blockids`), so a synchronous insert repeating an
asynchronous entry's ``insert_deduplication_token`` is dropped. chDB's engine knows
only its own ids; the entries' are the endpoint's (:mod:`chworkers.embedded.asyncdedup`),
so the endpoint asks them before a synchronous insert with a token into a table that
has some, and drops the insert itself: its data is still parsed (into a ``Null`` copy
of the table, its constraints checked, as the server parses and checks a block before
its sink drops it), and it is answered with the rows it parsed, as chDB answers an
insert its own log drops.

An insert costs nothing more while no table has asynchronous entries' ids, nor without
a token; with both, the table's facts (kept per generation of table facts) and a look-up.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from functools import partial
from itertools import chain
from typing import Any

from chworkers.embedded import asyncflush, blockids, queries, sql, streaming, tablerisk
from chworkers.embedded.asyncdedup import AsyncDedup, legacy_id
from chworkers.embedded.asynctarget import targets
from chworkers.embedded.queries import quote_ident
from chworkers.embedded.request import QueryRequest
from chworkers.embedded.summary import Stats
from chworkers.embedded.tracked import TrackedConnection
from chworkers.errors import ServerError

_TRUE = frozenset(["1", "true", "yes", "on"])
_READ = ("insert_deduplication_token", "deduplicate_insert", "insert_deduplicate")


def _token(handle: TrackedConnection, qr: QueryRequest, insert: sql.InsertHead) -> str:
    """The insert's token, '' without one or with its deduplication off."""
    explicit = dict(qr.settings)
    if "SETTINGS" in insert.statement.upper():
        explicit.update(sql.settings_clause(queries.sql_bytes(insert.statement)))
    effective = {**handle.own_settings([n for n in _READ if n not in explicit]), **explicit}
    mode = effective.get("deduplicate_insert", "enable").strip("'").lower()
    if mode == "backward_compatible_choice":
        on = effective.get("insert_deduplicate", "1").strip("'").lower() in _TRUE
    else:
        on = mode != "disable"
    return effective.get("insert_deduplication_token", "") if on else ""


def duplicate(
    dedup: AsyncDedup | None, handle: TrackedConnection, qr: QueryRequest, insert: sql.InsertHead
) -> bool:
    """Whether the synchronous insert repeats an asynchronous entry's token."""
    if dedup is None or not dedup.has_ids():
        return False
    name = tablerisk.target(insert.statement)
    if name is None:
        return False
    token = _token(handle, qr, insert)
    if not token:
        return False
    database = name[0] or qr.database or handle.database_override
    if database is None:
        if handle.base_database is None:  # asked once per connection (until its next USE)
            handle.base_database = queries.current_database(handle.conn)
        database = handle.base_database
    try:
        facts = targets.get(handle.conn, database, name[1])
    except ServerError:  # no such table: chDB's own insert says so
        return False
    if not facts.window or not dedup.has_ids(facts.storage):
        return False
    return dedup.seen(
        facts.storage,
        facts.window,
        blockids.token_hash(token),
        partial(legacy_id, token, "", b""),
    )


def drop(
    conn: Any, insert: sql.InsertHead, first: bytes, chunks: Iterator[bytes], stats: Stats
) -> None:
    """Parse the insert's data into a ``Null`` copy of its table; nothing is written."""
    _, columns, clause = asyncflush.split(insert.statement)
    name = tablerisk.target(insert.statement)
    assert name is not None
    target = (
        quote_ident(name[1])
        if name[0] is None
        else (f"{quote_ident(name[0])}.{quote_ident(name[1])}")
    )
    tmp = quote_ident(f"_chworkers_duplicate_{uuid.uuid4().hex}")
    queries.run(conn, f"CREATE TEMPORARY TABLE {tmp} AS {target} ENGINE = Null")
    try:
        cols = f" ({columns})" if columns is not None else ""
        rows = chain([first], chunks)
        streaming.insert(conn, f"INSERT INTO {tmp}{cols} {clause}", insert.fmt, rows, stats)
    finally:
        queries.run(conn, f"DROP TEMPORARY TABLE IF EXISTS {tmp}")
