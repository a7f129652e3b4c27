"""HTTP sessions: ``session_id`` keeps SET, USE and temporary tables between requests.

A session owns one chDB connection (a :class:`TrackedConnection`, which undoes each
request's URL settings). Only one request may use it at a time; a second one is refused
with SESSION_IS_LOCKED, as ClickHouse does. Sessions expire
``session_timeout`` seconds after their last request ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from chworkers.embedded.engine import CONNECTION_SETTINGS, Engine, close_quietly
from chworkers.embedded.exceptions import (
    INVALID_SESSION_TIMEOUT,
    SESSION_IS_LOCKED,
    SESSION_NOT_FOUND,
    USER_SESSION_LIMIT_EXCEEDED,
    clickhouse_error,
)
from chworkers.embedded.options import DEFAULT_MAX_SESSIONS
from chworkers.embedded.tracked import TrackedConnection

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 3600.0


@dataclass(kw_only=True)
class Session(TrackedConnection):
    """One session's connection (with what URL parameters changed on it), locked by the
    request that uses it."""

    session_id: str
    timeout: float
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False


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
            session = Session(
                session_id=session_id,
                conn=conn,
                timeout=timeout,
                busy=True,
                baseline=dict(CONNECTION_SETTINGS),
            )
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
