"""HTTP sessions: ``session_id`` keeps SET, USE and temporary tables between requests.

A session owns one chDB connection. Only one request may use it at a time; a second
one is refused with SESSION_IS_LOCKED, as ClickHouse does. Sessions expire
``session_timeout`` seconds after their last request ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from chworkers.embedded.engine import (
    Engine,
    apply_settings,
    close_quietly,
    current_database,
    current_settings,
    quote_ident,
    run,
)
from chworkers.embedded.exceptions import (
    INVALID_SESSION_TIMEOUT,
    SESSION_IS_LOCKED,
    SESSION_NOT_FOUND,
    USER_SESSION_LIMIT_EXCEEDED,
    clickhouse_error,
)
from chworkers.embedded.options import DEFAULT_MAX_SESSIONS
from chworkers.embedded.sql import assigned_settings, first_keyword

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 3600.0


@dataclass
class Session:
    """One session's connection and what URL parameters changed on it.

    ClickHouse applies URL settings and ``database`` to one query only, not to the
    session. Restoring them after every request would cost a lookup each time, so the
    session remembers which overrides are in effect and their original values, and a
    request changes only what differs from the previous one. ``baseline`` holds the
    session's own values of the settings read so far, until its next ``SET``.
    """

    session_id: str
    conn: Any
    timeout: float
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    baseline: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    base_database: str | None = None
    database_override: str | None = None

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
        """The session's own values of ``names``, without this request's URL settings.

        Read from chDB once and kept until the session's next ``SET``: a streamed
        SELECT asks for them every time. The caller must not have overridden any of
        ``names`` in this request (their values would be the override's).
        """
        wanted = list(names)
        new = [n for n in wanted if n not in self.baseline]
        if new:
            self.baseline.update(current_settings(self.conn, new))
        return {n: self.baseline[n] for n in wanted}

    def statement_ran(self, text: bytes) -> None:
        """After the session's own SET or USE (that chDB ran), its state is the new baseline.

        This request's URL settings end with it, as in ClickHouse: those the SET did not
        assign itself go back to their values before the request.
        """
        keyword = first_keyword(text)
        if keyword == "SET":
            assigned = assigned_settings(text)
            back = {n: self.baseline[n] for n in self.overrides if n not in assigned}
            self.baseline = {}
            self.overrides = {}
            apply_settings(self.conn, back)
        elif keyword == "USE":
            self.base_database = None
            self.database_override = None


def parse_timeout(value: str | None) -> float:
    if value is None or value == "":
        return DEFAULT_TIMEOUT
    try:
        timeout = float(value)
    except ValueError:
        raise clickhouse_error(
            INVALID_SESSION_TIMEOUT, f"Invalid session timeout: '{value}' is not a number"
        ) from None
    if not 0 <= timeout <= MAX_TIMEOUT:
        raise clickhouse_error(
            INVALID_SESSION_TIMEOUT,
            f"Session timeout '{value}' is out of range: it must be between 0 and "
            f"{MAX_TIMEOUT:g} seconds (max_session_timeout)",
        )
    return timeout


class Sessions:
    """The endpoint's live sessions, at most ``limit``; decisions under one lock, chDB
    I/O outside it."""

    def __init__(self, engine: Engine, limit: int = DEFAULT_MAX_SESSIONS) -> None:
        self._engine = engine
        self.limit = limit
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._opening = 0  # sessions whose connection is being opened (slots taken)
        self._closed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    @contextmanager
    def use(self, session_id: str, timeout: float, check: bool) -> Iterator[Session]:
        """Lock the session for one request, creating it unless ``check`` is set."""
        session = self._acquire(session_id, timeout, check)
        try:
            yield session
        finally:
            with self._lock:
                session.busy = False
                session.last_used = time.monotonic()

    def _acquire(self, session_id: str, timeout: float, check: bool) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                if session.busy:
                    raise clickhouse_error(
                        SESSION_IS_LOCKED,
                        f"Session {session_id} is locked by a concurrent client",
                    )
                session.busy = True
                session.timeout = timeout
                return session
            if check:
                raise clickhouse_error(
                    SESSION_NOT_FOUND, f"Session {session_id} not found (session_check=1)"
                )
            gone = []
            if len(self._sessions) + self._opening >= self.limit:
                gone = self._take_expired(time.monotonic())  # the sweep may be behind
            full = len(self._sessions) + self._opening >= self.limit
            if not full:
                self._opening += 1
        self._close(gone)
        if full:
            raise clickhouse_error(
                USER_SESSION_LIMIT_EXCEEDED,
                f"Too many sessions: {self.limit} are open (--max-sessions); reuse a "
                "session_id, give sessions a shorter session_timeout, or send queries "
                "without one",
            )
        try:
            conn = self._engine.connect()  # I/O outside the lock
        finally:
            with self._lock:
                self._opening -= 1
        with self._lock:
            if self._closed or session_id in self._sessions:
                close_quietly(conn)
                if self._closed:
                    raise clickhouse_error(SESSION_NOT_FOUND, "The endpoint is shutting down")
                raise clickhouse_error(
                    SESSION_IS_LOCKED, f"Session {session_id} is locked by a concurrent client"
                )
            session = Session(session_id, conn, timeout, busy=True)
            self._sessions[session_id] = session
            return session

    def expire(self, now: float | None = None) -> int:
        """Close sessions idle for longer than their timeout; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            gone = self._take_expired(now)
        self._close(gone)
        return len(gone)

    def _take_expired(self, now: float) -> list[Session]:
        """Remove the expired sessions from the table (under the lock); close them after."""
        gone = [s for s in self._sessions.values() if not s.busy and now - s.last_used > s.timeout]
        for s in gone:
            del self._sessions[s.session_id]
        return gone

    def _close(self, gone: list[Session]) -> None:
        for s in gone:
            log.debug("session %s expired", s.session_id)
            close_quietly(s.conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            gone = list(self._sessions.values())
            self._sessions.clear()
        for s in gone:
            close_quietly(s.conn)
