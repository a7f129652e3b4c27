"""Which tables can make chDB's streaming insert swallow an error.

chDB's streaming insert answers as if it succeeded when the table's sink chain throws
after the data is parsed (:mod:`chworkers.embedded.swallowed`), so after an insert the
endpoint reads ``system.errors``: one more chDB query, as costly as the insert itself
into a ``Memory`` or ``Null`` table. Only some tables can throw there: a MergeTree (too
many parts, too many partitions, its keys' expressions), a table with a ``CONSTRAINT``,
one with ``Nested`` arrays, one that materialized views read, and one with a column
whose ``DEFAULT``, ``MATERIALIZED`` or ``EPHEMERAL`` expression is computed as the
insert is written (unless it is a constant or ``now()`` and the like, which cannot
throw: ClickHouse checks a constant against the column's type at CREATE). This module
tells, per table name, whether an insert into it needs the check, and remembers the
answer until the next statement that may change a table.

A name with no database is looked up in every database: it is safe only if every table
of that name is. Anything unknown (a table function, a name not found, a temporary
table of the asking connection, an engine not listed here) needs the check. Not seen:
a temporary table of ANOTHER session that shadows a plain table's name (one made with
a MergeTree engine could swallow "Too many parts" unchecked).
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

from chworkers.embedded import sql
from chworkers.embedded.queries import OWN_QUERY_SETTINGS, quote_literal, run, sql_bytes

#: Engines whose sink throws none of the swallowed codes on its own.
_PLAIN_ENGINES = ("Memory", "Null", "Log", "TinyLog", "StripeLog", "Set", "Join")

#: Column expressions computed as an insert is written (an ``ALIAS`` is computed when read).
_COMPUTED_KINDS = ("DEFAULT", "MATERIALIZED", "EPHEMERAL")

_STRING = r"'([^'\\]|\\.)*'"
#: A column expression (as ``system.columns`` shows it) that cannot throw: a constant,
#: ``now()``, a random or a new UUID, the type's default (an ``EPHEMERAL`` column's).
HARMLESS_EXPRESSION = (
    r"^("
    r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?|" + _STRING + r"|NULL|true|false|\[\]|"
    r"(now|today|yesterday|rand|rand32|rand64|randCanonical|generateUUIDv4|generateUUIDv7)"
    r"\(\)|now(64)?\(([0-9]+(, *)?)?(" + _STRING + r")?\)|"
    r"defaultValueOfTypeName\(" + _STRING + r"\)"
    r")$"
)
_HARMLESS = re.compile(HARMLESS_EXPRESSION)


def may_throw(kind: str, expression: str) -> bool:
    """Whether a column (``default_kind`` and ``default_expression`` as ``system.columns``
    and ``DESCRIBE`` show them) is computed, as an insert is written, by an expression
    that may throw."""
    return kind in _COMPUTED_KINDS and _HARMLESS.match(expression) is None


@functools.lru_cache(maxsize=1024)
def target(statement: str) -> tuple[str | None, str] | None:
    """``(database or None, table)`` an ``INSERT INTO [TABLE] [db.]t`` writes, or None."""
    try:
        tokens = sql._tokens(sql_bytes(statement), complete=True)
    except sql.NeedMoreInput:
        return None
    words = tokens[:6]
    i = 0
    for keyword in ("INSERT", "INTO"):
        if i >= len(words) or words[i].kind != "word" or words[i].upper != keyword:
            return None
        i += 1
    if i < len(words) and words[i].kind == "word" and words[i].upper == "TABLE":
        i += 1
    if i < len(words) and words[i].kind == "word" and words[i].upper == "FUNCTION":
        return None
    return sql.table_name(words, i)


class TableRisks:
    """Per table name: does an insert into it need the swallowed-errors check?"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Per table name: (needs the check, the table queues its inserts).
        self._known: dict[tuple[str | None, str], tuple[bool, bool]] = {}
        self._generation = 0

    def forget(self) -> None:
        """A statement may have changed a table (DDL): ask chDB again next time."""
        with self._lock:
            self._known.clear()
            self._generation += 1

    @property
    def generation(self) -> int:
        """Counts :meth:`forget` calls: what was learnt of a table under an older
        generation may be stale (other caches of table facts compare it)."""
        with self._lock:
            return self._generation

    def needs_check(self, conn: Any, statement: str) -> bool:
        name = target(statement)
        return True if name is None else self._facts(conn, name)[0]

    def queues(self, conn: Any, statement: str) -> bool:
        """Whether the table says ``SETTINGS async_insert = 1`` (MergeTree): its inserts
        go to the asynchronous insert queue whatever their own settings, as ClickHouse's
        ``areAsynchronousInsertsEnabled``. A name without a database: any table of that
        name that says so."""
        name = target(statement)
        return False if name is None else self._facts(conn, name)[1]

    def _facts(self, conn: Any, name: tuple[str | None, str]) -> tuple[bool, bool]:
        with self._lock:
            known = self._known.get(name)
            generation = self._generation
        if known is not None:
            return known
        facts = _ask(conn, *name)
        with self._lock:
            if generation == self._generation:
                self._known[name] = facts
        return facts


def _ask(conn: Any, database: str | None, table: str) -> tuple[bool, bool]:
    where = f"name = {quote_literal(table)}"
    cols = f"table = {quote_literal(table)}"
    if database is not None:
        where += f" AND database = {quote_literal(database)}"
        cols += f" AND database = {quote_literal(database)}"
    plain = ", ".join(quote_literal(e) for e in _PLAIN_ENGINES)
    computed = ", ".join(quote_literal(k) for k in _COMPUTED_KINDS)
    res = run(
        conn,
        "SELECT count(), countIf(is_temporary OR engine NOT IN (" + plain + ") "
        "OR notEmpty(dependencies_table) OR position(create_table_query, ' CONSTRAINT ') > 0), "
        "countIf(match(create_table_query, '[ ,]async_insert = (1|true)([ ,]|$)')), "
        # Nested arrays, and expressions that may throw.
        "(SELECT countIf(type LIKE 'Array(%' AND position(name, '.') > 0) "
        "+ countIf(default_kind IN ("
        + computed
        + ") AND NOT match(default_expression, "
        + quote_literal(HARMLESS_EXPRESSION)
        + ")) FROM system.columns WHERE "
        + cols
        + ") FROM system.tables WHERE "
        + where
        + OWN_QUERY_SETTINGS,
    )
    found, risky, queued, columns = (int(v) for v in res.bytes().decode().split())
    return found == 0 or risky > 0 or columns > 0, queued > 0


#: The endpoint's one registry (chDB's tables are the process's).
risks = TableRisks()
