"""What the daemon runs in its workers: the functions it submits, by name.

A worker unpickles a submitted function by importing its module, so these live apart in
a module that imports nothing of the daemon: from ``partspressure`` or ``shardtarget``,
a worker's first parts check or table creation imported the batcher, the spool, the
dispatcher and the HTTP server (about 0.1-0.2 s of CPU in the middle of a run, during
which the worker inserted nothing). ``partspressure`` re-exports its two.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from chworkers.clickhouse.epochs import TimestampColumns, table_timestamps

__all__ = ["PartsState", "create_table", "parts_state", "table_columns", "timestamp_columns"]


@dataclasses.dataclass(frozen=True)
class PartsState:
    """A table's parts as read by :func:`parts_state`."""

    #: Most active parts in one partition (0: no part yet).
    parts: int
    #: The table's effective ``parts_to_delay_insert`` and ``parts_to_throw_insert``.
    delay_at: int
    throw_at: int


def parts_state(conn: Any, table: str) -> PartsState:
    """Read ``table``'s parts pressure (runs in a worker, on a leased connection)."""
    database, _, name = table.rpartition(".")
    db = "{db:String}" if database else "currentDatabase()"
    row = conn.query(
        "SELECT "
        "(SELECT max(c) FROM (SELECT count() AS c FROM system.parts "
        f"WHERE database = {db} AND table = {{name:String}} AND active GROUP BY partition_id)), "
        f"(SELECT any(engine_full) FROM system.tables WHERE database = {db} "
        "AND name = {name:String}), "
        "(SELECT any(value) FROM system.merge_tree_settings WHERE name = 'parts_to_delay_insert'), "
        "(SELECT any(value) FROM system.merge_tree_settings WHERE name = 'parts_to_throw_insert')",
        parameters={"db": database, "name": name},
    ).result_rows[0]
    parts, engine, delay_default, throw_default = row
    return PartsState(
        int(parts or 0),
        _table_setting(str(engine or ""), "parts_to_delay_insert", int(delay_default)),
        _table_setting(str(engine or ""), "parts_to_throw_insert", int(throw_default)),
    )


def _table_setting(engine_full: str, name: str, default: int) -> int:
    """A MergeTree setting from the table's own ``SETTINGS`` clause, else the server's."""
    found = re.search(rf"\b{name}\s*=\s*(\d+)", engine_full)
    return int(found.group(1)) if found else default


def create_table(conn: Any, statement: str) -> None:
    """(In a worker.) Run one ``CREATE TABLE IF NOT EXISTS``."""
    conn.command(statement, idempotent=True)


def table_columns(conn: Any, table: str) -> list[tuple[str, str, str]]:
    """(In a worker.) ``table``'s columns: name, type and default kind, in order."""
    database, _, name = table.rpartition(".")
    where = f"database = '{database}'" if database else "database = currentDatabase()"
    result = conn.query(
        f"SELECT name, type, default_kind FROM system.columns WHERE {where} "
        f"AND table = '{name}' ORDER BY position"
    )
    return [tuple(map(str, row)) for row in result.result_rows]  # type: ignore[misc]


def timestamp_columns(conn: Any, table: str) -> TimestampColumns:
    """(In a worker.) ``table``'s timestamp columns, as this worker's inserts find them
    (:func:`chworkers.clickhouse.epochs.table_timestamps`): what the daemon checks its
    batches against (:mod:`chworkers.daemon.epochcheck`)."""
    return table_timestamps(conn, table)
