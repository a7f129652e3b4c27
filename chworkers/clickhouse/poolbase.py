"""One pool's connections: opened and closed outside the lock, kept fresh, rebuilt after fork.

:class:`PoolBase` is the part of :class:`~chworkers.clickhouse.pool.ConnectionPool` that
one pool (one shard's, or an unsharded one) runs for itself: its state in one
:class:`~chworkers.clickhouse.poolstate.PoolState` under one lock, the network I/O that
state's decisions call for (done after the lock is released), the housekeeping thread,
the counters and hooks, and the rebuild in a forked child. The public API, and the
front over a sharded cluster's pools, are :class:`~chworkers.clickhouse.pool.ConnectionPool`'s.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

from chworkers.clickhouse.connection import Connection, ConnectionConfig
from chworkers.clickhouse.hooks import PoolHooks
from chworkers.clickhouse.hosts import HostSelector, is_host_failure
from chworkers.clickhouse.lease import LeaseClient
from chworkers.clickhouse.pooloptions import PoolOptions
from chworkers.clickhouse.poolstate import CLOSED, CREATE, PoolState, Waiter
from chworkers.clickhouse.retry import error_kind
from chworkers.errors import PoolClosedError, PoolTimeoutError

__all__ = ["PoolBase"]

#: The pool's logger, as before the pool was two modules (log filters keep working).
log = logging.getLogger("chworkers.clickhouse.pool")


class PoolBase:
    """One pool's state and the I/O it decides on (see the module's docstring).

    Every method here runs on a pool that is not sharded: a sharded
    :class:`~chworkers.clickhouse.pool.ConnectionPool` hands each call to one shard's pool.
    """

    config: ConnectionConfig
    lease: LeaseClient | None
    hooks: PoolHooks

    def _reset_state(self, options: PoolOptions, *, closed: bool) -> None:
        """This process's state: at construction, and again in a forked child."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._hosts = HostSelector(self.config.hosts, options)
        self._state = PoolState(
            options,
            self._hosts,
            single_host=len(self.config.hosts) == 1,
            pid=self._pid,
            closed=closed,
        )
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        if not closed:
            self._keeper = threading.Thread(
                target=_housekeep,
                args=(weakref.ref(self), self._stop, self._tick()),
                name="chworkers-pool-housekeeping",
                daemon=True,
            )
            self._keeper.start()

    def _tick(self) -> float:
        limits = [
            x / 4 for x in (self._state.options.idle_timeout, self._state.options.max_lifetime) if x
        ]
        return max(0.05, min([1.0, *limits]))

    # -- I/O (outside the lock) -------------------------------------------------------------

    def _acquire(self, deadline: float | None, limit: float | None, start: float) -> Connection:
        while True:
            with self._lock:
                if self._state.closed:
                    raise PoolClosedError(f"{self._state.describe(self.config.url)} is closed")
                decision, to_close = self._state.decide(time.monotonic())
            for conn, reason in to_close:
                self._close(conn, reason)
            got: Connection | str | None = decision if isinstance(decision, Connection) else CREATE
            if isinstance(decision, Waiter):
                decision.event.wait(
                    None if deadline is None else max(0.0, deadline - time.monotonic())
                )
                with self._lock:
                    got = decision.grant
                    if got is None:
                        self._state.waiters.remove(decision)
                if got is None:
                    self._note_timeout(start)
                    raise PoolTimeoutError(
                        f"no connection within {limit:g} s from {self!r}",
                        waited=time.monotonic() - start,
                    )
                if got == CLOSED:
                    raise PoolClosedError(f"{self!r} was closed while waiting")
            if not isinstance(got, Connection):
                return self._open_reserved(deliver=False)
            if self._state.options.validate_on_acquire and not got.ping():
                self._discard_in_use(got)
                continue
            return got

    def _open_reserved(self, *, deliver: bool) -> Connection:
        """Open a connection for a slot reserved in ``opening``; hand it out or pool it.

        Whatever goes wrong before the connection is counted (the connect, the host
        bookkeeping, even an interrupt) gives the reserved slot back: a slot lost here
        is lost for good, and enough of them leave the pool unable to open anything.
        """
        conn: Connection | None = None
        try:
            host = self._hosts.choose()
            try:
                conn = Connection(self.config, host)
            except Exception as exc:
                if is_host_failure(exc):
                    self._hosts.report_failure(host, exc)
                raise
            conn.adopt(self, self._pid)
            self._hosts.report_success(host)
            self._hosts.opened(host)
        except BaseException:
            with self._lock:
                self._state.opening -= 1
                self._state.let_waiters_open()  # the next waiter may try (maybe another host)
                self._drained.notify_all()
            if conn is not None:
                conn.close()
            raise
        with self._lock:
            state = self._state
            state.created += 1
            state.opening -= 1
            closed = state.closed
            if not closed:
                if deliver:
                    state.give(conn)
                else:
                    state.in_use.add(conn)
            self._drained.notify_all()
        self._emit("on_connection_created", conn.endpoint)
        if closed:
            self._close(conn, "shutdown")
            raise PoolClosedError(f"{self!r} was closed while connecting")
        return conn

    def _discard_in_use(self, conn: Connection) -> None:
        with self._lock:
            self._state.in_use.discard(conn)
            self._state.let_waiters_open()
        self._note_host_failure(conn)
        self._close(conn, "broken")

    def _close(self, conn: Connection, reason: str) -> None:
        with self._lock:
            if not conn.retire():  # e.g. force-closed by close(), then released by its user
                return
            self._state.count(self._state.closed_by, reason)
        if conn.opened_here:
            self._hosts.closed(conn.host)
        conn.close()
        self._emit("on_connection_closed", conn.endpoint, reason)

    def _maintain(self) -> None:
        """One housekeeping round: close stale idle connections, top up, re-probe hosts."""
        with self._lock:
            to_close = self._state.sweep(time.monotonic())
        for conn, reason in to_close:
            self._close(conn, reason)
        self._top_up()
        self._hosts.probe(
            lambda host: Connection(self.config, host).close(), lambda: self._state.closed
        )
        if to_close:
            self._emit_state()

    def _top_up(self) -> None:
        with self._lock:
            missing = self._state.reserve_missing()
        for opened in range(missing):
            try:
                self._open_reserved(deliver=True)
            except BaseException as exc:
                with self._lock:  # give the remaining reservations back
                    self._state.opening -= missing - opened - 1
                    self._drained.notify_all()
                if not isinstance(exc, Exception):
                    raise
                log.warning("could not open a ClickHouse connection for the pool minimum: %s", exc)
                break

    # -- bookkeeping ----------------------------------------------------------------------

    def _note_host_failure(self, conn: Connection) -> None:
        if conn.last_error is not None and is_host_failure(conn.last_error):
            self._hosts.report_failure(conn.host, conn.last_error)

    def _note_error(self, exc: BaseException) -> None:
        kind = error_kind(exc)
        code = getattr(exc, "code", None)
        key = kind if code is None else f"{kind}:{code}"
        with self._lock:
            self._state.count(self._state.errors, key)
        self._emit("on_error", kind, code if isinstance(code, int) else None)

    def _note_timeout(self, start: float) -> None:
        with self._lock:
            self._state.timeouts += 1
        self._emit("on_timeout", time.monotonic() - start)

    def _emit(self, event: str, *args: Any) -> None:
        try:
            getattr(self.hooks, event)(*args)
        except Exception:
            log.exception("pool hook %s failed", event)

    def _emit_state(self) -> None:
        if type(self.hooks).on_state is PoolHooks.on_state:
            return
        with self._lock:
            state = self._state
            counts = (
                len(state.in_use),
                len(state.idle),
                len(state.waiters),
                state.options.max_connections,
            )
        self._emit("on_state", *counts)

    def _check_fork(self) -> bool:
        """Rebuild the pool in a forked child (never share the parent's sockets)."""
        if self._pid == os.getpid():
            return False
        with _FORK_LOCK:
            if self._pid != os.getpid():
                log.debug("pool used after fork in pid %d: rebuilding", os.getpid())
                self._reset_state(self._state.options, closed=self._state.closed)
                self._top_up()
        return True


def _housekeep(ref: weakref.ref[PoolBase], stop: threading.Event, tick: float) -> None:
    while not stop.wait(tick):
        pool = ref()
        if pool is None or pool._state.closed:
            return
        try:
            pool._maintain()
        except Exception:
            log.exception("pool housekeeping failed")
        del pool


_FORK_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
