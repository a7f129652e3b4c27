"""Leases: one process holds the pool's capacity and lends it to others.

The supervisor owns a :class:`LeaseBroker` with a capacity (the configured maximum number
of ClickHouse connections). Each worker process gets a :class:`LeaseClient` and hands it to
its :class:`~chworkers.clickhouse.pool.ConnectionPool` (``lease=``): every connection taken out of a
worker's pool first takes a lease, and returns it when the connection comes back, so all
workers together never have more than ``capacity`` connections out.

A lease is a slot of a file the broker creates in a private (0700) directory, locked by
its holder (:mod:`~chworkers.clickhouse.leaseslots`): the kernel keeps the count exact
and frees a dead holder's slots, even after SIGKILL. Taking a free slot and giving it
back are local to the holder (a few microseconds), so the broker is not on the path of
every task. It is there for what needs one owner:

- the queue: a request that finds no free slot (or finds others already waiting) joins
  the broker's FIFO queue, across all processes, and the broker tells the requests at
  its head when to take a slot that was freed;
- the capacity (:meth:`LeaseBroker.resize`), closing, and :meth:`LeaseBroker.stats`:
  who holds what, from the rows of counters each client keeps in the shared table.

Every client connects once to the broker's Unix socket (lazily, from the process using
it, so clients work with fork, spawn and forkserver); when its process dies the broker
reads end-of-file and forgets it, and :meth:`LeaseBroker.reclaim` reports what it held.
The broker's serving thread is :class:`~chworkers.clickhouse.leaseserve.LeaseServing`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import weakref
from typing import Any

import multiprocess
from multiprocess.context import BaseContext

from chworkers.clickhouse.leaseclient import LeaseClient
from chworkers.clickhouse.leasedirs import SOCKET_NAME, private_dir
from chworkers.clickhouse.leaseledger import LeaseLedger, LeaseStats
from chworkers.clickhouse.leasequeue import LeaseQueue
from chworkers.clickhouse.leaseserve import LIVENESS_INTERVAL as LIVENESS_INTERVAL
from chworkers.clickhouse.leaseserve import RECHECK_INTERVAL as RECHECK_INTERVAL
from chworkers.clickhouse.leaseserve import LeaseServing
from chworkers.clickhouse.leaseslots import (
    CAPACITY,
    CLOSED,
    HIGH,
    MAX_SLOTS,
    SlotTable,
)
from chworkers.errors import ConfigError, PoolClosedError, PoolError

__all__ = ["LeaseBroker", "LeaseClient", "LeaseStats"]

log = logging.getLogger(__name__)


def _check_capacity(capacity: Any) -> int:
    if (
        not isinstance(capacity, int)
        or isinstance(capacity, bool)
        or not 1 <= capacity <= MAX_SLOTS
    ):
        raise ConfigError(
            f"lease capacity: {capacity!r} is not an integer from 1 to {MAX_SLOTS}",
            key="capacity",
            value=capacity,
            expected=f"an integer from 1 to {MAX_SLOTS}",
        )
    return capacity


class LeaseBroker(LeaseServing):
    """Holds ``capacity`` leases and grants them, first come first served, to clients."""

    def __init__(self, capacity: int, *, context: BaseContext | None = None) -> None:
        self._capacity = _check_capacity(capacity)
        self.context = context if context is not None else multiprocess.get_context()
        self._dir = private_dir()
        self.address = os.path.join(self._dir, SOCKET_NAME)
        self.slots_path = os.path.join(self._dir, "slots")
        try:
            self._table = SlotTable(self.slots_path, create=True)
        except BaseException as exc:
            shutil.rmtree(self._dir, ignore_errors=True)
            if isinstance(exc, OSError):
                raise PoolError(f"cannot create the lease file {self.slots_path}: {exc}") from exc
            raise
        self._table.words[CAPACITY] = self._table.words[HIGH] = self._capacity
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._server.bind(self.address)
        except OSError as exc:
            self._server.close()
            self._table.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise PoolError(f"cannot bind the lease socket {self.address}: {exc}") from exc
        self._server.listen(128)
        self._server.setblocking(False)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._lock = threading.Lock()
        self._ledger = LeaseLedger(self._table)
        self._peers = self._ledger.peers
        self._waiters = LeaseQueue()
        self._closed = False
        self._crash: str | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        _BROKERS.add(self)

    def __repr__(self) -> str:
        with self._lock:
            state = "closed" if self._closed else "serving" if self._thread else "not started"
            return (
                f"<LeaseBroker {state}: {self._in_use_locked()} in use, "
                f"{len(self._waiters)} waiting, capacity {self._capacity}, "
                f"{len(self._peers)} clients>"
            )

    # -- public API (called from the owning process) ------------------------------------

    def start(self) -> None:
        """Start serving clients from a daemon thread."""
        with self._lock:
            if self._closed:
                raise PoolClosedError("the lease broker is closed")
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._serve, name="chworkers-lease-broker", daemon=True
            )
            self._thread.start()

    def client(self, holder: str) -> LeaseClient:
        """A client for ``holder`` (e.g. ``"worker-3"``), to pass to that worker's process."""
        if not isinstance(holder, str) or not holder:
            raise ConfigError(
                f"lease holder: {holder!r} is not a non-empty string",
                key="holder",
                value=holder,
                expected="a non-empty string",
            )
        return LeaseClient(self.address, holder)

    def reclaim(self, holder: str) -> int:
        """Forget ``holder`` once its process is gone; returns how many leases it held.

        The kernel already freed them when the process died (the lease file's locks die
        with their holder), so this only disconnects what is left of the holder and
        reports what it held, including what the broker noticed by itself since the last
        call. A live process's leases cannot be taken from it: they come back when it
        releases them or exits.
        """
        with self._lock:
            freed = self._ledger.reclaim(holder)
        if freed:
            log.warning("reclaimed %d lease(s) from holder %s", freed, holder)
        self._wake()
        return freed

    def resize(self, capacity: int) -> None:
        """Change the capacity; leases already out above a smaller capacity are not
        revoked, and no more are granted until fewer than the new capacity are out."""
        capacity = _check_capacity(capacity)
        with self._lock:
            self._capacity = capacity
            if self._table.fd >= 0:
                words = self._table.words
                words[HIGH] = max(words[HIGH], capacity)
                words[CAPACITY] = capacity
        self._wake()

    @property
    def capacity(self) -> int:
        return self._capacity

    def problems(self) -> list[str]:
        """Why the broker cannot grant leases, for health checks (empty while serving).

        Without the broker no worker can take a connection: nothing is inserted again
        until the supervisor (the daemon) restarts.
        """
        with self._lock:
            thread, closed, crash = self._thread, self._closed, self._crash
        if crash is not None:
            return [f"the lease broker crashed ({crash}); no worker can get a connection"]
        if closed:
            return ["the lease broker is closed; no worker can get a connection"]
        if thread is not None and not thread.is_alive():
            return ["the lease broker's thread is gone; no worker can get a connection"]
        return []

    def waiting(self) -> int:
        """How many requests wait for a lease now (cheap: for a loop to read often)."""
        with self._lock:
            return len(self._waiters)

    def stats(self) -> LeaseStats:
        with self._lock:
            self._ledger.drop_dead()
            by_holder, granted, timeouts = self._ledger.totals()
            return LeaseStats(
                capacity=self._capacity,
                in_use=self._in_use_locked(),
                waiting=len(self._waiters),
                by_holder=by_holder,
                waiting_by_holder=self._waiters.by_holder(),
                granted_total=granted,
                timeouts_total=timeouts,
                reclaimed_total=self._ledger.reclaimed,
                clients=len(self._peers),
            )

    def close(self) -> None:
        """Refuse waiting and future requests, disconnect clients and remove the socket."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._table.words[CLOSED] = 1
            thread = self._thread
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10.0)
        if thread is None:
            self._shutdown()

    def __enter__(self) -> LeaseBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forget_after_fork(self) -> None:
        # A forked child must not keep the broker's sockets open (clients would never see
        # the owner die) nor remove the owner's files.
        self._pid = -1
        for peer in self._peers:
            with contextlib.suppress(OSError):
                peer.conn.close()
        with contextlib.suppress(OSError):
            self._server.close()
        self._peers.clear()
        self._waiters = LeaseQueue()
        self._closed = True
        self._table.forget()  # the broker holds no slot: nothing of the owner's is lost
        self._lock = threading.Lock()


_BROKERS: weakref.WeakSet[LeaseBroker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for broker in list(_BROKERS):
        broker._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
