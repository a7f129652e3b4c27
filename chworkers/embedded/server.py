"""The endpoint: a listening socket, one thread per client connection, chDB behind.

Within :class:`~chworkers.http.limits.HttpLimits`: a sized listen backlog, at most
``max_connections`` connections (the next is answered 503 with ClickHouse's error body
and ``Retry-After``), idle keep-alive connections closed after ``idle_timeout``, a
request head within ``header_timeout`` of its first byte and each MiB of a body within
``body_timeout`` (SOCKET_TIMEOUT, as ClickHouse answers when its receive timeout passes).

:class:`EmbeddedServer` owns the engine (which locks the data directory), the listening
socket and the session registry. :meth:`serve_forever` accepts connections until
:meth:`request_stop` is called (from a signal handler, which only enqueues the
request), then drains: idle keep-alive connections close at once, running requests get
``grace`` seconds to finish, sessions and chDB are closed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import threading
import time
from pathlib import Path

from chworkers.embedded.asynccomplete import complete_at_start
from chworkers.embedded.asyncdedup import AsyncDedup
from chworkers.embedded.asyncflush import Flusher
from chworkers.embedded.asynclog import AsyncInsertLog
from chworkers.embedded.asyncqueue import AsyncInsertQueue
from chworkers.embedded.engine import Engine
from chworkers.embedded.exceptions import (
    TOO_MANY_SIMULTANEOUS_QUERIES,
    clickhouse_error,
    response_body,
)
from chworkers.embedded.execute import Context
from chworkers.embedded.handler import Connection, Credentials
from chworkers.embedded.options import DEFAULT_MAX_SESSIONS
from chworkers.embedded.pool import ConnectionPool
from chworkers.embedded.sessions import Sessions
from chworkers.embedded.stats import EndpointStats
from chworkers.errors import EmbeddedError
from chworkers.freeport import bind_free
from chworkers.http.framing import plain_response
from chworkers.http.limits import HttpLimits
from chworkers.http.watch import Closer, Deadlines
from chworkers.wording import plural

log = logging.getLogger(__name__)


class EmbeddedServer:
    """The ClickHouse HTTP interface over chDB, in this process."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 8123,
        *,
        credentials: Credentials | None = None,
        limits: HttpLimits | None = None,
        request_timeout: float = 300.0,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        self.path = Path(path).resolve()
        self.host = host
        self.port = port
        self.credentials = credentials
        self.limits = limits or HttpLimits()
        self.request_timeout = request_timeout
        self.max_sessions = max_sessions
        self._deadlines = Deadlines()
        self._closer = Closer()
        self._busy_response = b""
        self._engine: Engine | None = None
        self._sessions: Sessions | None = None
        self._pool: ConnectionPool | None = None
        self._inserts: AsyncInsertQueue | None = None
        self._insert_log: AsyncInsertLog | None = None
        self._listener: socket.socket | None = None
        self._connections: dict[Connection, threading.Thread] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stop_requested = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Open the data directory and listen; raises EmbeddedError with the reason."""
        self._engine = Engine(self.path)
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.port:
                listener.bind((self.host, self.port))
            else:  # a port no client is given while the endpoint is down and restarted
                bind_free(listener, self.host)
            listener.listen(self.limits.backlog)
        except OSError as exc:
            self._engine.close()
            why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise EmbeddedError(
                f"cannot listen on {self.host}:{self.port}: {why}", host=self.host, port=self.port
            ) from exc
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._sessions = Sessions(self._engine, self.max_sessions)
        self._pool = ConnectionPool(self._engine)
        self._busy_response = self._busy(self._engine.version)
        log.info(
            "embedded ClickHouse (chDB %s) serving %s, data in %s",
            self._engine.version,
            self.url,
            self.path,
        )

    @property
    def wakeup_fd(self) -> int:
        """For :func:`signal.set_wakeup_fd`: chDB's threads may receive a signal, and
        this wakes the accept loop at once instead of at its next timeout."""
        return self._wake_w

    def request_stop(self) -> None:
        """Ask :meth:`serve_forever` to stop; safe from a signal handler."""
        self._stop_requested = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def serve_forever(self, grace: float = 30.0) -> None:
        assert self._listener is not None and self._engine is not None
        assert self._sessions is not None
        assert self._pool is not None
        stats = EndpointStats()
        self._engine.on_connect = stats.chdb_connection_opened
        dedup = AsyncDedup(self.path / "chworkers_async_dedup")
        dropped = dedup.migrate(self.path / "store")
        dedup.scan(self.path / "store")
        completed = complete_at_start(self._engine, dedup)
        if completed:
            log.warning("completed %d unfinished flushes of asynchronous inserts", completed)
        if dropped:
            log.info("deleted the asynchronous inserts' ids of %d dropped tables", dropped)
        self._insert_log = AsyncInsertLog(self._engine, self.path)
        self._insert_log.start()
        self._inserts = AsyncInsertQueue(
            Flusher(self._engine, dedup, self._insert_log),
            on_push=stats.async_queued,
            on_flush=stats.async_flushed,
        )
        ctx = Context(self._engine, self._sessions, self._pool, socket.gethostname(), stats)
        ctx.inserts = self._inserts
        ctx.dedup = dedup
        ctx.insert_log = self._insert_log
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        next_expiry = time.monotonic() + 1.0
        try:
            while not self._stop_requested:
                for key, _ in sel.select(timeout=1.0):
                    if key.data == "accept":
                        self._accept(ctx)
                    else:
                        os.read(self._wake_r, 64)
                if time.monotonic() >= next_expiry:
                    self._sessions.expire()
                    next_expiry = time.monotonic() + 1.0
        finally:
            sel.close()
            self._shutdown(grace)

    def _accept(self, ctx: Context) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if len(self._connections) >= self.limits.max_connections:
                log.warning(
                    "refusing a connection: %d already open (max_connections)",
                    len(self._connections),
                )
                self._closer.close(sock, self._busy_response)
                ctx.stats.connection_refused()
                return
            conn = Connection(
                ctx,
                self.credentials,
                sock,
                self.limits,
                self.request_timeout,
                self._deadlines,
                self._closer,
            )
            thread = threading.Thread(
                target=self._run_connection, args=(conn,), name="chworkers-embedded-conn"
            )
            thread.daemon = True
            self._connections[conn] = thread
        thread.start()

    def _busy(self, version: str) -> bytes:
        """What a client beyond max_connections is answered: ClickHouse's error for too
        many queries, but with 503 and Retry-After (ClickHouse's 500 for it is not
        retried by clients; a 503 is, by clickhouse-connect among others)."""
        err = clickhouse_error(
            TOO_MANY_SIMULTANEOUS_QUERIES,
            f"Too many simultaneous connections. Maximum: {self.limits.max_connections}",
        )
        return plain_response(
            503,
            response_body(err, version),
            content_type="text/plain; charset=UTF-8",
            headers={
                "X-ClickHouse-Exception-Code": str(err.code),
                "Retry-After": str(self.limits.retry_after),
            },
        )

    def _run_connection(self, conn: Connection) -> None:
        try:
            conn.run()
        finally:
            with self._lock:
                self._connections.pop(conn, None)

    def _shutdown(self, grace: float) -> None:
        log.info("stopping: closing idle connections, waiting for running requests")
        if self._listener is not None:
            self._listener.close()
        deadline = time.monotonic() + grace
        while True:
            with self._lock:
                pending = list(self._connections.items())
            for conn, _ in pending:
                conn.close_if_idle()
            if not pending or time.monotonic() >= deadline:
                break
            pending[0][1].join(timeout=0.05)
        if pending:
            log.warning(
                "%s still running after %.0f s; stopping anyway",
                plural(len(pending), "request"),
                grace,
            )
        if self._inserts is not None:  # as a server: what waits is flushed
            self._inserts.close(flush=True)
        if self._insert_log is not None:  # and the log of what was
            self._insert_log.close()
        self._deadlines.stop()
        self._closer.stop()
        if self._sessions is not None:
            self._sessions.close()
        if self._pool is not None:
            self._pool.close()
        if self._engine is not None:
            self._engine.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        log.info("stopped")
