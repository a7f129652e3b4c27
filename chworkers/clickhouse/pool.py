"""The connection pool: bounded, fair, fork-safe, retrying, spread over hosts.

All pool state lives in one :class:`~chworkers.clickhouse.poolstate.PoolState` guarded
by one lock; its methods decide under the lock and return what to open or close, and
the opening and closing (network I/O) happen after the lock is released (one pool's state
and its I/O are :class:`~chworkers.clickhouse.poolbase.PoolBase`; here are the public API
and the front over a sharded cluster's pools). Waiters
queue in FIFO order: a returned connection (or the right to open one) is handed to the
oldest waiter directly, so nobody can overtake a caller that is already waiting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

from chworkers import timeouts
from chworkers.clickhouse.cluster import Cluster
from chworkers.clickhouse.connection import Connection, ConnectionConfig
from chworkers.clickhouse.hooks import PoolHooks
from chworkers.clickhouse.lease import LeaseClient
from chworkers.clickhouse.poolbase import PoolBase
from chworkers.clickhouse.pooloptions import PoolOptions, PoolStats
from chworkers.clickhouse.poolstate import CLOSED
from chworkers.clickhouse.retry import RetryPolicy, error_kind
from chworkers.clickhouse.shardpools import check_shard, merge_stats, per_shard, shard_configs
from chworkers.errors import (
    PoolClosedError,
    PoolError,
    PoolTimeoutError,
    RetriesExhaustedError,
)
from chworkers.timeouts import DEFAULT, Timeout

__all__ = ["ConnectionPool", "PoolOptions", "PoolStats"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class ConnectionPool(PoolBase):
    """A pool of ClickHouse connections (docs/pool.md).

    Over a sharded cluster (``shards=``, or ``shards`` in the connection options; see
    docs/sharding.md) it is one pool per shard, each over that shard's replicas with its
    own ``max_connections`` and its own ``lease`` (give one lease client per shard): every
    call names its ``shard``, and a shard that is down cannot hold the others' connections.
    """

    def __init__(
        self,
        connection_options: ConnectionConfig | str | Mapping[str, object],
        pool_options: PoolOptions | Mapping[str, object] | None = None,
        *,
        lease: LeaseClient | Sequence[LeaseClient] | None = None,
        hooks: PoolHooks | Sequence[PoolHooks] | None = None,
        shards: Cluster | Sequence[object] | Mapping[str, object] | None = None,
    ) -> None:
        config = ConnectionConfig.coerce(connection_options)
        if shards is not None:
            config = dataclasses.replace(config, shards=Cluster.parse(shards))
        self.config = config
        self.lease: LeaseClient | None = None
        self.hooks: PoolHooks = PoolHooks()
        #: The shards' own pools, in shard order (None: the pool is not sharded).
        self.shards: list[ConnectionPool] | None = None
        if config.shards is not None:
            n = len(config.shards)
            leases, all_hooks = per_shard(lease, n, "lease"), per_shard(hooks, n, "hooks")
            options = PoolOptions.coerce(pool_options)
            self.shards = []
            try:
                for i, shard_config in enumerate(shard_configs(config, config.shards)):
                    self.shards.append(
                        ConnectionPool(shard_config, options, lease=leases[i], hooks=all_hooks[i])
                    )
            except BaseException:
                for pool in self.shards:
                    pool.close(0)
                raise
            return
        self.lease = per_shard(lease, 1, "lease")[0]
        self.hooks = per_shard(hooks, 1, "hooks")[0] or PoolHooks()
        self._reset_state(PoolOptions.coerce(pool_options), closed=False)
        _POOLS.add(self)
        self._top_up()

    def _shard(self, shard: int | None, where: str) -> ConnectionPool:
        """The pool to serve a call for ``shard``: this one, or that shard's."""
        index = check_shard(shard, None if self.shards is None else len(self.shards), where)
        return self if self.shards is None or index is None else self.shards[index]

    @property
    def options(self) -> PoolOptions:
        """How the pool is sized and behaves (:meth:`resize` changes the bounds; for a
        sharded pool, ``max_connections`` is each shard's)."""
        if self.shards is not None:
            return self.shards[0].options
        return self._state.options

    @property
    def closed(self) -> bool:
        if self.shards is not None:
            return all(pool.closed for pool in self.shards)
        return self._state.closed

    def __repr__(self) -> str:
        if self.shards is not None:
            parts = "; ".join(f"shard {i}: {pool!r}" for i, pool in enumerate(self.shards))
            return f"<ConnectionPool of {len(self.shards)} shards: {parts}>"
        with self._lock:
            return self._state.describe(self.config.url)

    # -- the seed API -----------------------------------------------------------------------

    def get_connection(self, timeout: Timeout = DEFAULT, *, shard: int | None = None) -> Connection:
        """Take a connection (to ``shard``, of a sharded pool), waiting (FIFO) up to
        ``timeout`` seconds (by default the ``acquire_timeout`` setting; None: without a
        limit).

        Raises :class:`~chworkers.errors.PoolTimeoutError`,
        :class:`~chworkers.errors.PoolClosedError`, or the error opening a connection failed
        with (e.g. :class:`~chworkers.errors.ConnectError`); a :class:`ConfigError` for a
        ``shard`` the pool does not have (or none, of a sharded pool).
        """
        pool = self._shard(shard, "get_connection")
        if pool is not self:
            return pool.get_connection(timeout)
        self._check_fork()
        limit = timeouts.resolve(timeout, self.options.acquire_timeout)
        start = time.monotonic()
        deadline = None if limit is None else start + limit
        if self.lease is not None:
            if self._state.closed:
                raise PoolClosedError(f"{self!r} is closed")
            try:
                self.lease.acquire(limit)
            except PoolTimeoutError:
                self._note_timeout(start)
                raise
        try:
            conn = self._acquire(deadline, limit, start)
        except BaseException:
            if self.lease is not None:
                self.lease.release()
            raise
        wait = time.monotonic() - start
        with self._lock:
            self._state.acquired += 1
            self._state.waits.append(wait)
        self._emit("on_acquire", wait)
        self._emit_state()
        return conn

    def release_connection(self, connection: Connection) -> None:
        """Give ``connection`` back; broken or expired connections are closed and replaced."""
        if self.shards is not None:
            shard = next((s for s in self.shards if s is connection.owner), None)
            if shard is None:
                raise PoolError(f"{connection!r} does not belong to any shard of {self!r}")
            shard.release_connection(connection)
            return
        self._check_fork()
        if connection.owner is not self:
            raise PoolError(f"{connection!r} does not belong to {self!r}")
        if not connection.owned_by(self, self._pid):
            return  # lent before a fork: it belongs to the parent's incarnation of the pool
        now = time.monotonic()
        with self._lock:
            state = self._state
            if connection not in state.in_use:
                raise PoolError(
                    f"{connection!r} is not in use from {state.describe(self.config.url)} "
                    "(released twice?)"
                )
            state.in_use.remove(connection)
            reason = "shutdown" if state.closed else state.expired(connection, now)
            if reason is None and state.total() >= state.options.max_connections:
                reason = "resize"  # the pool was made smaller while this was out
            if reason is None:
                state.give(connection)
                to_close = None
            else:
                to_close = connection
                state.let_waiters_open()
            self._drained.notify_all()
        if to_close is not None:
            self._note_host_failure(to_close)
            self._close(to_close, reason or "broken")
        if self.lease is not None:
            self.lease.release()
        self._emit("on_release")
        self._emit_state()

    def with_connection(
        self,
        fn: Callable[[Connection], T],
        *,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
        shard: int | None = None,
    ) -> T:
        """Run ``fn(connection)`` (on ``shard``, of a sharded pool), retried per the retry
        policy, and return its result.

        ``idempotent`` overrides what failures say about their operation (reads and
        inserts are idempotent; see :class:`~chworkers.clickhouse.retry.RetryPolicy`).
        """
        pool = self._shard(shard, "with_connection")
        if pool is not self:
            return pool.with_connection(fn, idempotent=idempotent, retry=retry)
        policy = (retry or self.options.retry).new()
        while True:
            conn: Connection | None = None
            try:
                conn = self.get_connection()
                result = fn(conn)
            except Exception as exc:
                if conn is not None:
                    self.release_connection(conn)
                self._note_error(exc)
                try:
                    policy = policy.increment(exc, idempotent=idempotent)
                except RetriesExhaustedError as gave_up:
                    log.warning("%s", gave_up)
                    raise
                kind, backoff = error_kind(exc), policy.sleep_time()
                with self._lock:
                    self._state.count(self._state.retries, kind)
                self._emit("on_retry", kind, policy.attempts, backoff)
                log.info(
                    "retrying in %.3f s after attempt %d failed: %s", backoff, policy.attempts, exc
                )
                if self._stop.wait(backoff) and self._state.closed:
                    raise PoolClosedError(f"{self!r} was closed while retrying") from exc
                continue
            except BaseException:
                if conn is not None:
                    self.release_connection(conn)
                raise
            self.release_connection(conn)
            return result

    @contextlib.contextmanager
    def connection(
        self, timeout: Timeout = DEFAULT, *, shard: int | None = None
    ) -> Iterator[Connection]:
        """``with pool.connection() as conn:`` takes a connection and always gives it back."""
        conn = self.get_connection(timeout, shard=shard)
        try:
            yield conn
        finally:
            self.release_connection(conn)

    def close(self, timeout: Timeout = DEFAULT) -> None:
        """Refuse new acquires; close idle connections now and busy ones as they come back.

        Connections still out after ``timeout`` seconds (by default the ``close_timeout``
        setting; None: no limit) are closed anyway.
        """
        if self.shards is not None:
            for pool in self.shards:  # each waits for its own stragglers within the limit
                pool.close(timeout)
            return
        self._check_fork()
        limit = timeouts.resolve(timeout, self.options.close_timeout)
        with self._lock:
            state = self._state
            state.closed = True
            while state.waiters:
                state.grant(CLOSED)
            idle = list(state.idle)
            state.idle.clear()
        self._stop.set()
        for conn in idle:
            self._close(conn, "shutdown")
        end = None if limit is None else time.monotonic() + limit
        with self._lock:
            while (state.in_use or state.opening) and (end is None or time.monotonic() < end):
                self._drained.wait(None if end is None else end - time.monotonic())
            stragglers = list(state.in_use)
        for conn in stragglers:
            log.warning("closing %r still in use %.1f s after close()", conn, limit)
            self._close(conn, "shutdown")
        self._emit_state()

    def resize(self, max_connections: int, min_connections: int | None = None) -> None:
        """Change the pool's bounds at run time (e.g. on SIGHUP).

        Growing lets waiters open connections at once; shrinking closes surplus idle
        connections now and surplus busy ones as they come back. A sharded pool applies
        the bounds to each shard.
        """
        if self.shards is not None:
            for pool in self.shards:
                pool.resize(max_connections, min_connections)
            return
        self._check_fork()
        lowest = self.options.min_connections if min_connections is None else min_connections
        options = dataclasses.replace(
            self.options,
            max_connections=max_connections,
            min_connections=min(lowest, max_connections),
        )
        with self._lock:
            self._state.options = options
            surplus = self._state.surplus_idle()
            self._state.let_waiters_open()
        for conn in surplus:
            self._close(conn, "resize")
        self._emit_state()

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self, shard: int | None = None) -> PoolStats:
        """A snapshot of the pool; of a sharded pool, of one ``shard``, or (None) the
        shards' summed (see :func:`~chworkers.clickhouse.shardpools.merge_stats`)."""
        if self.shards is not None:
            if shard is None:
                return merge_stats([pool.stats() for pool in self.shards])
            return self._shard(shard, "stats").stats()
        check_shard(shard, None, "stats")
        self._check_fork()
        with self._lock:
            return self._state.stats(None if self.lease is None else self.lease.held)


_POOLS: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
