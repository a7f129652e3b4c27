"""Asynchronous inserts at the HTTP interface: which INSERTs are queued, and queuing one.

As ClickHouse's ``executeQuery``: an INSERT whose data follows it (``FORMAT X`` or
``VALUES``) into a table, with ``async_insert`` true (in its SETTINGS clause, the URL, or
its session's ``SET``), is pushed into the queue (:mod:`chworkers.embedded.asyncqueue`)
instead of being written. Its data is read whole first, up to
``async_insert_max_data_size``: a larger body is inserted synchronously, as there. With
``wait_for_async_insert`` (the default) the client is answered once its entry is flushed
(with its own error, or ``written_rows`` of its own rows), within
``wait_for_async_insert_timeout``; without it, at once.

An INSERT that does not ask costs a dictionary lookup more: the endpoint's
connections start with ``async_insert = 0`` (:mod:`chworkers.embedded.engine`), known
without asking chDB; a session's value is read once after each of its ``SET``s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from itertools import chain

from chworkers.embedded import asyncflush, asynctarget, queries, sql, tablerisk
from chworkers.embedded.asyncqueue import AsyncInsertQueue, Entry, Key, Limits
from chworkers.embedded.queries import quote_ident, quote_literal
from chworkers.embedded.request import QueryRequest
from chworkers.embedded.summary import Stats
from chworkers.embedded.tracked import TrackedConnection

log = logging.getLogger(__name__)

_TRUE = frozenset(["1", "true", "yes", "on"])

#: What the queue needs to know of an insert's settings.
_READ = (
    "async_insert_busy_timeout_max_ms",
    "async_insert_busy_timeout_min_ms",
    "async_insert_use_adaptive_busy_timeout",
    "async_insert_busy_timeout_increase_rate",
    "async_insert_busy_timeout_decrease_rate",
    "async_insert_max_data_size",
    "async_insert_max_query_number",
    "async_insert_deduplicate",
    "deduplicate_insert",
    "insert_deduplication_token",
    "wait_for_async_insert",
    "wait_for_async_insert_timeout",
)
#: Settings that do not separate entries (ClickHouse's ``settings_to_skip``).
_NOT_IN_KEY = frozenset(["insert_deduplication_token", "log_comment"])


def _true(value: str) -> bool:
    return value.strip().strip("'").lower() in _TRUE


def wanted(handle: TrackedConnection, qr: QueryRequest, insert: sql.InsertHead) -> bool:
    """Whether the INSERT goes to the queue."""
    value = None
    if "async_insert" in insert.statement:  # a SETTINGS clause may say
        value = sql.settings_clause(queries.sql_bytes(insert.statement)).get("async_insert")
    if value is None:
        value = qr.settings.get("async_insert")
    if value is None:
        value = handle.own_settings(["async_insert"])["async_insert"]
    if not _true(value) and not tablerisk.risks.queues(handle.conn, insert.statement):
        return False
    if qr.query_params and insert.fmt.lower() == "values":
        return False  # parameters in the rows: written synchronously
    return tablerisk.target(insert.statement) is not None  # not a table function


def push(
    queue: AsyncInsertQueue,
    handle: TrackedConnection,
    qr: QueryRequest,
    insert: sql.InsertHead,
    first: bytes,
    chunks: Iterator[bytes],
    stats: Stats,
    query_id: str,
) -> Iterator[bytes] | None:
    """Queue the insert (and wait for its flush if it says so).

    Returns None when it is done, or, when its data is larger than
    ``async_insert_max_data_size``, the whole data (what was read, then the rest) for a
    synchronous insert.
    """
    clause = sql.settings_clause(queries.sql_bytes(insert.statement))
    explicit = {**qr.settings, **clause}
    # The connection's own values of the rest: read from chDB once per connection (a
    # session's, again after its next SET), not once per insert.
    effective = {**handle.own_settings([n for n in _READ if n not in explicit]), **explicit}
    limits = _limits(effective)
    database = _database(handle, qr, insert.statement)
    data = bytearray(first)
    for chunk in chain([b""], chunks):  # the first piece may be too large already
        data += chunk
        if len(data) > limits.max_data_size:
            return chain([bytes(data)], chunks)
    key = Key(
        database=database,
        statement=insert.statement,
        fmt=insert.fmt,
        settings=tuple(sorted((n, v) for n, v in qr.settings.items() if n not in _NOT_IN_KEY)),
        session_sets=tuple(handle.sets),
    )
    entry = Entry(bytes(data), effective.get("insert_deduplication_token", ""), query_id)
    queue.push(key, limits, entry)
    if _true(effective.get("wait_for_async_insert", "1")):
        entry.wait(float(effective.get("wait_for_async_insert_timeout", "120") or 120))
        stats.written_rows += entry.rows
        stats.written_bytes += entry.nbytes
    return None


#: Tables known to exist, per generation of table facts (:mod:`chworkers.embedded.tablerisk`).
_existing: set[tuple[int, str, str]] = set()


def _database(handle: TrackedConnection, qr: QueryRequest, statement: str) -> str:
    """The database the insert's unqualified names are in; raises UNKNOWN_TABLE for a
    table that does not exist, as ClickHouse refuses it before queuing."""
    target = tablerisk.target(statement)
    assert target is not None
    database = qr.database or handle.database_override
    if database is None:  # the connection's own (a session may have said USE)
        if handle.base_database is None:  # asked once per connection (until its next USE)
            handle.base_database = queries.current_database(handle.conn)
        database = handle.base_database
    table_db = target[0] or database
    generation = tablerisk.risks.generation
    if (generation, table_db, target[1]) not in _existing:
        res = queries.run(
            handle.conn, f"EXISTS TABLE {quote_ident(table_db)}.{quote_ident(target[1])}"
        )
        if res.bytes().strip() != b"1":
            raise asynctarget.unknown_table(table_db, target[1])
        if len(_existing) > 10_000:
            _existing.clear()
        _existing.add((generation, table_db, target[1]))
    return database


def _limits(s: dict[str, str]) -> Limits:
    mode = s.get("deduplicate_insert", "enable").strip("'").lower()
    if mode == "backward_compatible_choice":
        dedup = _true(s.get("async_insert_deduplicate", "0"))
    else:
        dedup = mode != "disable"
    return Limits(
        busy_max_ms=int(float(s.get("async_insert_busy_timeout_max_ms", "200"))),
        busy_min_ms=int(float(s.get("async_insert_busy_timeout_min_ms", "50"))),
        adaptive=_true(s.get("async_insert_use_adaptive_busy_timeout", "1")),
        increase_rate=float(s.get("async_insert_busy_timeout_increase_rate", "0.2")),
        decrease_rate=float(s.get("async_insert_busy_timeout_decrease_rate", "0.2")),
        max_data_size=int(s.get("async_insert_max_data_size", str(10 << 20))),
        max_query_number=int(s.get("async_insert_max_query_number", "450")),
        deduplicate=dedup,
    )


def flush_targets(text: bytes) -> list[tuple[str | None, str]] | None:
    """For ``SYSTEM FLUSH ASYNC INSERT QUEUE [db.t, ...]``, its tables (empty: all);
    None for any other statement."""
    if sql.first_keyword(text) != "SYSTEM":
        return None
    toks = sql.tokens(text)
    words = [t.upper for t in toks[:5]]
    if words != ["SYSTEM", "FLUSH", "ASYNC", "INSERT", "QUEUE"]:
        return None
    tables: list[tuple[str | None, str]] = []
    names: list[str] = []
    for tok in [*toks[5:], sql.Token("punct", 0, 0, b",")]:
        if tok.kind in ("word", "quoted"):
            names.append(sql.unquote(tok))
        elif tok.text == b"," and names:
            tables.append((names[0], names[1]) if len(names) > 1 else (None, names[0]))
            names = []
    return tables


def flushes_logs(text: bytes) -> bool:
    """Whether the statement is ``SYSTEM FLUSH LOGS [...]``."""
    if sql.first_keyword(text) != "SYSTEM":
        return False
    toks = sql.tokens(text)
    return [t.upper for t in toks[:3]] == ["SYSTEM", "FLUSH", "LOGS"]


def flush(queue: AsyncInsertQueue, database: str, tables: list[tuple[str | None, str]]) -> None:
    """Flush the queue's entries into ``tables`` (all if empty) and wait for them."""
    wanted_tables = {(db or database, t) for db, t in tables}

    def chosen(key: Key) -> bool:
        return (
            not wanted_tables or asyncflush.qualified(key.database, key.statement) in wanted_tables
        )

    queue.flush_all(chosen)


_QUEUE_STRUCTURE = (
    "query String, database String, table String, format String, first_update_us UInt64, "
    "total_bytes UInt64, `entries.query_id` Array(String), `entries.bytes` Array(UInt64)"
)


def with_queue_table(queue: AsyncInsertQueue, text: bytes) -> bytes:
    """``text`` with ``system.asynchronous_inserts`` replaced by what the queue holds.

    chDB's own table is always empty (it has no queue); the endpoint's entries take its
    place, in its columns, as a subquery over the ``format`` table function.
    """
    if b"asynchronous_inserts" not in text:
        return text
    toks = sql.tokens(text)
    spans = [
        (toks[i].start, toks[i + 2].end)
        for i in range(len(toks) - 2)
        if sql.unquote(toks[i]).lower() == "system"
        and toks[i].kind in ("word", "quoted")
        and toks[i + 1].text == b"."
        and toks[i + 2].kind in ("word", "quoted")
        and sql.unquote(toks[i + 2]) == "asynchronous_inserts"
    ]
    if not spans:
        return text
    rows = []
    for key, entries, first in queue.pending():
        database, table = asyncflush.qualified(key.database, key.statement)
        rows.append(
            json.dumps(
                {
                    "query": f"{key.statement} FORMAT {key.fmt}",
                    "database": database,
                    "table": table,
                    "format": key.fmt,
                    "first_update_us": int(first * 1_000_000),
                    "total_bytes": sum(len(e.data) for e in entries),
                    "entries.query_id": [e.query_id for e in entries],
                    "entries.bytes": [len(e.data) for e in entries],
                }
            )
        )
    table_sql = (
        "(SELECT query, database, table, format, "
        "fromUnixTimestamp64Micro(first_update_us) AS first_update, total_bytes, "
        "`entries.query_id`, `entries.bytes` FROM format(JSONEachRow, "
        f"{quote_literal(_QUEUE_STRUCTURE)}, {quote_literal(chr(10).join(rows))}))"
    ).encode()
    out = bytearray()
    at = 0
    for start, end in spans:
        out += text[at:start] + table_sql
        at = end
    return bytes(out + text[at:])
