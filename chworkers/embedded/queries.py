"""Running a statement on a chDB connection: the query text as bytes, quoting, the
connection's settings and database, and what chDB's parser says about a query."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chworkers.embedded.exceptions import (
    BAD_ARGUMENTS,
    UNKNOWN_SETTING,
    clickhouse_error,
    from_chdb,
)

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: What a query the endpoint runs for itself on a request's connection sets for itself
#: (:func:`own_query_settings`).
_OWN_SETTINGS = {
    "limit": "0",
    "offset": "0",
    "max_result_rows": "0",
    "max_result_bytes": "0",
    "max_rows_to_read": "0",
    "max_bytes_to_read": "0",
    "max_columns_to_read": "0",
    "max_temporary_columns": "0",
    "max_temporary_non_const_columns": "0",
    "max_execution_time": "0",
    "additional_result_filter": "''",
    "additional_table_filters": "{}",
}


def own_query_settings(reading: Iterable[str] = ()) -> str:
    """The SETTINGS clause of a query the endpoint runs for itself (see
    :data:`OWN_QUERY_SETTINGS`), without the settings whose values it reads with
    ``getSetting`` (``reading``): a SETTINGS clause changes what those return."""
    skip = set(reading)
    own = [f"{n} = {v}" for n, v in _OWN_SETTINGS.items() if n not in skip]
    return " SETTINGS " + ", ".join(own) if own else ""


#: The SETTINGS clause of a query the endpoint runs for itself on a request's connection,
#: where the request's settings (a session's ``SET`` too) are in effect: none of them may
#: cut what it reads short (``limit``, ``offset``, ``additional_result_filter``;
#: ``limit = 1`` made the check for swallowed errors miss the insert's, ``offset = 1``
#: made every later request of the session an internal error) or refuse it
#: (``max_result_rows``, ``max_columns_to_read``: an insert refused, or answered an
#: error after it landed).
OWN_QUERY_SETTINGS = own_query_settings()


def quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_bytes(sql: str | bytes) -> bytes:
    """Query text as chDB takes it: the bytes the client sent, never re-encoded.

    Text that came from a URL is decoded with ``surrogateescape``, so bytes that are not
    UTF-8 (``SELECT hex('\xff')``) go back to chDB as they arrived.
    """
    return sql if isinstance(sql, bytes) else sql.encode("utf-8", "surrogateescape")


def run(
    conn: Any,
    sql: str | bytes,
    fmt: str = "TabSeparated",
    params: Mapping[str, str] | None = None,
) -> Any:
    """Run a statement and return chDB's whole result; raises ServerError."""
    try:
        return conn.query(sql_bytes(sql), fmt, params=dict(params or {}))
    except RuntimeError as exc:
        raise from_chdb(exc) from None


def apply_settings(conn: Any, settings: Mapping[str, str]) -> None:
    """Put ``settings`` in effect on the connection, as ClickHouse applies URL parameters.

    One ``SET a = ..., b = ...`` for all of them: each chDB query costs about 0.2 ms of
    CPU, and clickhouse-connect sends five or six settings with every request.
    ClickHouse checks every name before applying any, so an unknown one changes nothing.
    """
    for name in settings:
        if not _SETTING_NAME.match(name):
            raise clickhouse_error(UNKNOWN_SETTING, f"Unknown setting '{name}'")
    if settings:
        run(conn, "SET " + ", ".join(f"{n} = {quote_literal(v)}" for n, v in settings.items()))


def current_settings(conn: Any, names: Iterable[str]) -> dict[str, str]:
    """The connection's current values of ``names`` (to restore them afterwards).

    Raises UNKNOWN_SETTING for a name ClickHouse does not know.
    """
    wanted = list(names)
    for name in wanted:
        if not _SETTING_NAME.match(name):
            raise clickhouse_error(UNKNOWN_SETTING, f"Unknown setting '{name}'")
    if not wanted:
        return {}
    # getSetting() is ~5x cheaper than a system.settings lookup.
    exprs = ", ".join(f"toString(getSetting({quote_literal(n)}))" for n in wanted)
    res = run(conn, f"SELECT [{exprs}]" + own_query_settings(wanted), "JSONCompactEachRow")
    if not res.bytes().strip():  # wanted has limit or offset, and its value cut the row
        raise clickhouse_error(
            BAD_ARGUMENTS,
            f"cannot read the current values of {', '.join(wanted)}: "
            "the connection's limit or offset leaves no row",
        )
    values = json.loads(res.bytes())[0]
    return {n: str(v) for n, v in zip(wanted, values, strict=True)}


def current_database(conn: Any) -> str:
    res = run(conn, "SELECT currentDatabase()" + OWN_QUERY_SETTINGS)
    return str(res.bytes().decode().rstrip("\n"))


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


@dataclass(frozen=True)
class Kind:
    """What chDB's parser says about a query before it runs."""

    #: How many statements the text holds (1 if it does not parse: the engine reports it).
    statements: int
    #: A SELECT, SHOW, DESCRIBE, EXISTS, EXPLAIN, CHECK ...: a statement with a result set.
    reads: bool


def classify(conn: Any, sql: str | bytes) -> Kind:
    """How many statements ``sql`` holds and whether it is one that returns rows."""
    try:
        info = conn.classify_query(sql_bytes(sql))
        count = int(info["statement_count"])
        reads = int(info["query_class"]) == 0  # chdb query_class.READ_ONLY
    except (RuntimeError, KeyError, TypeError, ValueError):
        return Kind(1, False)
    return Kind(count or 1, reads)
