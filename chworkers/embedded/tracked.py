"""A chDB connection that knows which request-scoped changes are in effect on it.

ClickHouse applies a request's URL settings and ``database`` to that one query, never
to what comes after it. A chDB connection keeps every ``SET`` and ``USE`` until it is
closed, so a connection that serves more than one request (a session's, or one reused
from :mod:`chworkers.embedded.pool`) must undo them. Reading the original values and
restoring them after every request would cost a chDB query each time; instead the
connection remembers which overrides are in effect and their original values, and the
next request changes only what differs from the previous one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chworkers.embedded.queries import (
    apply_settings,
    current_database,
    current_settings,
    quote_ident,
    run,
)
from chworkers.embedded.sql import assigned_settings, first_keyword


@dataclass(kw_only=True)
class TrackedConnection:
    """A chDB connection and the URL settings and database a request put in effect.

    ``baseline`` holds the connection's own values of the settings read so far (until
    its next ``SET``), ``overrides`` the settings the last request changed.
    """

    conn: Any
    baseline: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    base_database: str | None = None
    database_override: str | None = None
    #: The SET statements run on the connection (a session's), in order: an
    #: asynchronous insert's flush runs them on a connection of its own.
    sets: list[bytes] = field(default_factory=list)

    def prepare(self, database: str | None, settings: dict[str, str]) -> None:
        """Put the request's database and settings in effect, undoing the last ones."""
        conn = self.conn
        if database and database != self.database_override:
            if self.base_database is None:
                self.base_database = current_database(conn)
            run(conn, f"USE {quote_ident(database)}")
            self.database_override = database
        elif not database and self.database_override is not None:
            run(conn, f"USE {quote_ident(self.base_database or 'default')}")
            self.database_override = None
        new = [n for n in settings if n not in self.baseline]
        if new:
            self.baseline.update(current_settings(conn, new))
        changes = {n: v for n, v in self.baseline.items() if n in self.overrides}
        changes = {n: v for n, v in changes.items() if n not in settings}
        changes.update({n: v for n, v in settings.items() if self.overrides.get(n) != v})
        try:
            apply_settings(conn, changes)
        except Exception:
            # Unknown state: put every original value back before reporting the error.
            apply_settings(conn, {n: self.baseline[n] for n in self.overrides})
            self.overrides = {}
            raise
        self.overrides = dict(settings)

    def own_settings(self, names: Iterable[str]) -> dict[str, str]:
        """The connection's own values of ``names``, without this request's URL settings.

        Read from chDB once and kept until the connection's next ``SET``: a streamed
        SELECT asks for them every time. The caller must not have overridden any of
        ``names`` in this request (their values would be the override's).
        """
        wanted = list(names)
        new = [n for n in wanted if n not in self.baseline]
        if new:
            self.baseline.update(current_settings(self.conn, new))
        return {n: self.baseline[n] for n in wanted}

    def statement_ran(self, text: bytes) -> None:
        """After a SET or USE of its own (that chDB ran), its state is the new baseline.

        This request's URL settings end with it, as in ClickHouse: those the SET did not
        assign itself go back to their values before the request.
        """
        keyword = first_keyword(text)
        if keyword == "SET":
            self.sets.append(text)
            assigned = assigned_settings(text)
            back = {n: self.baseline[n] for n in self.overrides if n not in assigned}
            self.baseline = {}
            self.overrides = {}
            apply_settings(self.conn, back)
        elif keyword == "USE":
            self.base_database = None
            self.database_override = None
