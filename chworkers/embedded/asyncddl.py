"""What DDL statements do to the asynchronous inserts' block ids (kept by
:mod:`chworkers.embedded.asyncdedup`), as they do to a table's own block ids: a
``TRUNCATE`` resets them, ``ALTER ... DROP PARTITION`` and the like drop those of the
parts dropped, ``DROP`` and ``DETACH`` let go of them in memory (their files go with,
or stay in, the table's directory).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from chworkers.embedded import queries, sql
from chworkers.embedded.asyncdedup import AsyncDedup, window
from chworkers.errors import ServerError

log = logging.getLogger(__name__)


def truncated(text: bytes) -> tuple[str | None, str] | None:
    """``(database or None, table)`` a ``TRUNCATE [TEMPORARY] [TABLE] [IF EXISTS]
    [db.]t`` empties, or None for any other statement."""
    if sql.first_keyword(text) != "TRUNCATE":
        return None
    toks = sql.tokens(text)
    i = 1
    for optional in ("TEMPORARY", "TABLE", "IF", "EXISTS"):
        if i < len(toks) and toks[i].kind == "word" and toks[i].upper == optional:
            i += 1
    if i < len(toks) and toks[i].kind == "word" and toks[i].upper in ("DATABASE", "ALL"):
        return None
    return sql.table_name(toks, i)


def altered_parts(text: bytes) -> tuple[str | None, str] | None:
    """``(database or None, table)`` of an ``ALTER TABLE [IF EXISTS] [db.]t`` that may
    drop parts (its text names a PARTITION or PART), or None."""
    if sql.first_keyword(text) != "ALTER" or b"PART" not in text.upper():
        return None
    toks = sql.tokens(text)
    i = 1
    for optional in ("TABLE", "IF", "EXISTS"):
        if i < len(toks) and toks[i].kind == "word" and toks[i].upper == optional:
            i += 1
    return sql.table_name(toks, i)


def truncated_tables_of(text: bytes) -> str | None:
    """The database a ``TRUNCATE [ALL] TABLES FROM [IF EXISTS] db ...`` empties tables of,
    or None for any other statement."""
    if sql.first_keyword(text) != "TRUNCATE":
        return None
    toks = sql.tokens(text)

    def word(i: int, *words: str) -> bool:
        return i < len(toks) and toks[i].kind == "word" and toks[i].upper in words

    i = 2 if word(1, "ALL") else 1
    if not (word(i, "TABLES") and word(i + 1, "FROM")):
        return None
    i += 2
    if word(i, "IF") and word(i + 1, "EXISTS"):
        i += 2
    if i < len(toks) and toks[i].kind in ("word", "quoted"):
        return sql.unquote(toks[i])
    return None


def after_ddl(dedup: AsyncDedup, conn: Any, database: str | None, text: bytes) -> None:
    """After a statement that ran: a ``TRUNCATE`` forgets the table's asynchronous
    entries' ids (its block ids went with its parts, as chDB's own log drops them), and
    ``TRUNCATE ALL TABLES FROM db`` those of each table of ``db`` left without a part
    (whatever its ``LIKE`` chose: a table with no part has no block id left); a ``DROP``
    or ``DETACH`` lets go of the ids of tables no longer there (their files go with their
    directories, or wait in them to be attached again); an ``ALTER`` that drops parts
    (``DROP PARTITION``...) forgets the ids of the flushes whose parts are all gone.

    The statement ran: a failure here is logged, never the statement's answer (the ids
    stay as they were; a file of a dropped table goes with its directory anyway).
    """
    try:
        _after_ddl(dedup, conn, database, text)
    except ServerError as err:
        log.warning("the asynchronous inserts' ids after %r: %s", text[:200], err.message)


def _reset_tables(dedup: AsyncDedup, conn: Any, where: str, params: dict[str, str]) -> None:
    """Reset the ids of the tables ``where`` (a condition on ``system.tables``) selects."""
    res = queries.run(
        conn, f"SELECT data_paths[1] FROM system.tables WHERE {where}", "TSVRaw", params
    )
    for line in res.bytes().decode("utf-8", "surrogateescape").splitlines():
        if line:
            dedup.reset(line)


def _after_ddl(dedup: AsyncDedup, conn: Any, database: str | None, text: bytes) -> None:
    word = sql.first_keyword(text)
    emptied = truncated_tables_of(text) if word == "TRUNCATE" else None
    if emptied is not None:
        _reset_tables(
            dedup,
            conn,
            "database = {db:String} AND name NOT IN "
            "(SELECT table FROM system.parts WHERE database = {db:String} AND active)",
            {"db": emptied},
        )
    elif word == "TRUNCATE":
        target = truncated(text)
        if target is None:
            return
        db = target[0] or database or queries.current_database(conn)
        _reset_tables(
            dedup, conn, "database = {db:String} AND name = {t:String}", {"db": db, "t": target[1]}
        )
    elif word == "ALTER" and dedup.has_ids():
        target = altered_parts(text)
        if target is None:
            return
        db = target[0] or database or queries.current_database(conn)
        res = queries.run(
            conn,
            "SELECT data_paths[1], engine, engine_full FROM system.tables "
            "WHERE database = {db:String} AND name = {t:String}",
            "JSONCompactEachRow",
            {"db": db, "t": target[1]},
        )
        for line in res.bytes().splitlines():
            if line.strip():
                storage, engine, engine_full = json.loads(line)
                dedup.release_dropped(str(storage), window(str(engine), str(engine_full)))
    elif word in ("DROP", "DETACH") and dedup.tables():
        res = queries.run(conn, "SELECT arrayJoin(data_paths) FROM system.tables", "TSVRaw")
        alive = set(res.bytes().decode("utf-8", "surrogateescape").splitlines())
        dedup.forget(lambda storage: storage in alive)
