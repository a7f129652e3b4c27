"""What a connection pool holds, and every decision about it, taken under the pool's lock.

:class:`PoolState` keeps the pool's connections (idle, in use, being opened), its FIFO
waiters and its counters, as httpcore's pool does: the methods that decide (``decide``,
``give``, ``sweep``...) only move connections between those containers and return what
the caller must open or close; they never do I/O and never block.
:class:`~chworkers.clickhouse.pool.ConnectionPool` calls every method here with its lock
held, and opens and closes connections after releasing it.
"""

from __future__ import annotations

import threading
from collections import deque

from chworkers.clickhouse.connection import Connection
from chworkers.clickhouse.hosts import HostSelector
from chworkers.clickhouse.pooloptions import PoolOptions, PoolStats

__all__ = ["CLOSED", "CREATE", "PoolState", "Waiter"]

CREATE = "create"  # a waiter's grant: you may open a new connection
CLOSED = "closed"  # a waiter's grant: the pool was closed


class Waiter:
    """A caller queued for a connection: ``grant`` is set (a connection, :data:`CREATE` or
    :data:`CLOSED`) before ``event`` is."""

    __slots__ = ("event", "grant")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.grant: Connection | str | None = None


class PoolState:
    """The pool's containers and counters in one process; guarded by the pool's lock."""

    def __init__(
        self,
        options: PoolOptions,
        hosts: HostSelector,
        *,
        single_host: bool,
        pid: int,
        closed: bool = False,
    ) -> None:
        self.options = options
        self.hosts = hosts
        self.single_host = single_host
        self.pid = pid  # connections opened in another process are broken here
        self.closed = closed
        self.idle: deque[Connection] = deque()  # right end = most recently returned
        self.in_use: set[Connection] = set()
        self.opening = 0
        self.waiters: deque[Waiter] = deque()
        self.created = self.acquired = self.timeouts = 0
        self.closed_by: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.retries: dict[str, int] = {}
        self.waits: deque[float] = deque(maxlen=4096)

    def describe(self, url: str) -> str:
        """The pool's repr."""
        state = "closed, " if self.closed else ""
        return (
            f"<ConnectionPool {url}: {state}{len(self.in_use)} in use, "
            f"{len(self.idle)} idle, {len(self.waiters)} waiting, max {self.options.max_connections}>"
        )

    def stats(self, lease_held: int | None) -> PoolStats:
        waits = sorted(self.waits)

        def pct(q: float) -> float:
            return waits[min(len(waits) - 1, int(q * len(waits)))] if waits else 0.0

        return PoolStats(
            in_use=len(self.in_use),
            idle=len(self.idle),
            waiting=len(self.waiters),
            opening=self.opening,
            max=self.options.max_connections,
            min=self.options.min_connections,
            created=self.created,
            closed=dict(self.closed_by),
            acquired=self.acquired,
            timeouts=self.timeouts,
            acquire_wait_p50=pct(0.50),
            acquire_wait_p99=pct(0.99),
            acquire_wait_max=waits[-1] if waits else 0.0,
            errors=dict(self.errors),
            retries=dict(self.retries),
            hosts=self.hosts.snapshot(),
            lease_held=lease_held,
        )

    def total(self) -> int:
        return len(self.idle) + len(self.in_use) + self.opening

    def expired(self, conn: Connection, now: float) -> str | None:
        """Why ``conn`` must not be used again (a ``closed_by`` reason), or None."""
        if conn.broken or conn.closed or not conn.opened_in(self.pid):
            return "broken"
        if self.options.max_lifetime is not None and conn.age(now) >= self.options.max_lifetime:
            return "lifetime"
        if self.hosts.is_down(conn.host):
            return "host_down"
        return None

    def decide(self, now: float) -> tuple[Connection | Waiter | None, list[tuple[Connection, str]]]:
        """Reuse an idle connection, reserve a slot to open one (None), or queue a waiter;
        and the idle connections found unusable on the way, to close."""
        to_close: list[tuple[Connection, str]] = []
        if not self.waiters:
            while self.idle:
                # One host: reuse the most recently returned connection, so that surplus ones
                # go idle and time out. Several: take them in turn, spreading requests.
                conn = self.idle.pop() if self.single_host else self.idle.popleft()
                reason = self.expired(conn, now)
                if reason is None:
                    self.in_use.add(conn)
                    return conn, to_close
                to_close.append((conn, reason))
            if self.total() < self.options.max_connections:
                self.opening += 1
                return None, to_close
        waiter = Waiter()
        self.waiters.append(waiter)
        return waiter, to_close

    def give(self, conn: Connection) -> None:
        """A usable connection is free: to the oldest waiter, else to the idle list."""
        if self.waiters:
            self.in_use.add(conn)
            self.grant(conn)
        else:
            self.idle.append(conn)

    def let_waiters_open(self) -> None:
        """Free capacity: the oldest waiters may open new connections."""
        while self.waiters and not self.closed and self.total() < self.options.max_connections:
            self.opening += 1
            self.grant(CREATE)

    def grant(self, grant: Connection | str) -> None:
        waiter = self.waiters.popleft()
        waiter.grant = grant
        waiter.event.set()

    def sweep(self, now: float) -> list[tuple[Connection, str]]:
        """Idle connections to close: broken, expired, or idle too long beyond the minimum."""
        to_close: list[tuple[Connection, str]] = []
        keep: deque[Connection] = deque()
        total = self.total()
        for conn in self.idle:  # oldest first
            reason = self.expired(conn, now)
            if (
                reason is None
                and self.options.idle_timeout is not None
                and conn.idle_for(now) >= self.options.idle_timeout
                and total > self.options.min_connections
            ):
                reason = "idle"
            if reason is None:
                keep.append(conn)
            else:
                to_close.append((conn, reason))
                total -= 1
        self.idle = keep
        return to_close

    def reserve_missing(self) -> int:
        """Reserve slots to bring the pool back to ``min_connections``."""
        missing = 0 if self.closed else max(0, self.options.min_connections - self.total())
        self.opening += missing
        return missing

    def surplus_idle(self) -> list[Connection]:
        """Idle connections beyond ``max_connections`` (after a resize), to close."""
        surplus = []
        while self.idle and self.total() > self.options.max_connections:
            surplus.append(self.idle.popleft())
        return surplus

    def count(self, counter: dict[str, int], key: str) -> None:
        counter[key] = counter.get(key, 0) + 1
