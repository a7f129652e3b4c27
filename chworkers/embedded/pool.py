"""chDB connections for requests without a session, kept for the next request.

Every request outside a session needs a connection of its own (its ``SET`` and ``USE``
must not reach any other request). Opening one costs chDB about 0.3 ms of CPU with the
GIL held, and closing it more: a third of the endpoint's own cost for a small request.
So a connection whose request left nothing behind on it goes back here and serves the
next one, as a :class:`~chworkers.embedded.tracked.TrackedConnection` that undoes the
last request's URL settings and database only where the next one differs.

A connection is kept only after a request that cannot have changed it (a SELECT, an
INSERT, DDL other than on temporary tables, with no external data and no ``readonly``,
which cannot be undone); it is closed after :attr:`ConnectionPool.max_uses` requests,
and at most :attr:`ConnectionPool.max_idle` wait here.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chworkers.embedded import sql
from chworkers.embedded.engine import CONNECTION_SETTINGS, Engine, close_quietly
from chworkers.embedded.tracked import TrackedConnection

if TYPE_CHECKING:
    from chworkers.embedded.protocol import Response
    from chworkers.embedded.request import QueryRequest
    from chworkers.embedded.sessions import Session

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PooledConnection(TrackedConnection):
    """A connection lent to one request; it sets ``reusable`` once it is done with it."""

    uses: int = 0
    reusable: bool = False


class ConnectionPool:
    """Idle chDB connections; decisions under one lock, opening and closing outside it."""

    def __init__(self, engine: Engine, max_idle: int = 16, max_uses: int = 1000) -> None:
        self._engine = engine
        self.max_idle = max_idle
        self.max_uses = max_uses
        self._idle: list[PooledConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        with self._lock:
            return f"<ConnectionPool {len(self._idle)} idle, max {self.max_idle}>"

    def take(self) -> PooledConnection:
        """An idle connection, or a new one (raises ServerError if chDB cannot open it)."""
        with self._lock:
            pooled = self._idle.pop() if self._idle else None
        if pooled is None:
            pooled = PooledConnection(
                conn=self._engine.connect(), baseline=dict(CONNECTION_SETTINGS)
            )
        pooled.uses += 1
        pooled.reusable = False
        return pooled

    def give_back(self, pooled: PooledConnection) -> None:
        """Keep the connection for the next request if it may serve one, else close it."""
        keep = (
            pooled.reusable
            and pooled.uses < self.max_uses
            and "readonly" not in pooled.overrides  # readonly cannot be set back
        )
        with self._lock:
            if keep and not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(pooled)
                return
        close_quietly(pooled.conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for pooled in idle:
            close_quietly(pooled.conn)


#: Statements that change nothing on their chDB connection a later request could see
#: (CREATE is one unless it makes a temporary table).
LEAVES_NOTHING = frozenset(
    [
        "SELECT",
        "WITH",
        "INSERT",
        "DESCRIBE",
        "DESC",
        "SHOW",
        "EXISTS",
        "EXPLAIN",
        "CHECK",
        "CREATE",
        "DROP",
        "ALTER",
        "TRUNCATE",
        "OPTIMIZE",
        "RENAME",
    ]
)


def done_with(
    handle: Session | PooledConnection, qr: QueryRequest, text: bytes, resp: Response
) -> None:
    """A request without a session succeeded: may its connection serve the next one?

    Not after a SET, USE, a temporary table (external data makes some), a result cut
    off by an error, or anything not known to leave the connection as it was.
    """
    if not isinstance(handle, PooledConnection) or qr.external or resp.failed:
        return
    keyword = sql.first_keyword(text)
    if keyword == "CREATE" and b"TEMPORARY" in text.upper():
        return
    handle.reusable = keyword in LEAVES_NOTHING
