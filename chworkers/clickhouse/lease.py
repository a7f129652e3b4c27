"""Leases: one process holds the pool's capacity and lends it to others.

The supervisor owns a :class:`LeaseBroker` with a capacity (the configured maximum number
of ClickHouse connections). Each worker process gets a :class:`LeaseClient` and hands it to
its :class:`~chworkers.clickhouse.pool.ConnectionPool` (``lease=``): every connection taken out of a
worker's pool first takes a lease, and returns it when the connection comes back, so all
workers together never have more than ``capacity`` connections out.

Transport: the broker listens on a Unix socket in a private (0700) temporary directory and
serves every client connection from one thread, which alone decides grants (FIFO across all
processes) and timeouts. A client is a picklable ``(address, holder)`` pair that connects
lazily from the process using it, so it works with fork, spawn and forkserver alike, and
only that process holds the socket: when it dies, even by SIGKILL, the kernel closes the
socket, the broker reads end-of-file and takes back that connection's leases. A broker
also checks every second that the processes holding leases are alive, and
:meth:`LeaseBroker.reclaim` frees a holder's leases explicitly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import socket
import tempfile
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import multiprocess
from multiprocess.connection import Connection as _MPConnection
from multiprocess.context import BaseContext

from chworkers.clickhouse.leaseclient import LeaseClient
from chworkers.errors import ConfigError, PoolClosedError
from chworkers.pids import alive

__all__ = ["LeaseBroker", "LeaseClient", "LeaseStats"]

log = logging.getLogger(__name__)

#: How often the broker checks that processes holding leases are still alive.
LIVENESS_INTERVAL = 1.0


@dataclass(frozen=True)
class LeaseStats:
    """A snapshot of a broker's state."""

    capacity: int
    in_use: int
    waiting: int
    by_holder: dict[str, int] = field(default_factory=dict)
    waiting_by_holder: dict[str, int] = field(default_factory=dict)
    granted_total: int = 0
    timeouts_total: int = 0
    reclaimed_total: int = 0
    clients: int = 0


@dataclass(eq=False)
class _Peer:
    conn: Any
    holder: str = "?"
    pid: int | None = None
    held: int = 0
    drop: bool = False


@dataclass(eq=False)
class _Request:
    peer: _Peer
    rid: int
    deadline: float | None


def _check_capacity(capacity: Any) -> int:
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise ConfigError(
            f"lease capacity: {capacity!r} is not an integer >= 1",
            key="capacity",
            value=capacity,
            expected="an integer >= 1",
        )
    return capacity


class LeaseBroker:
    """Holds ``capacity`` leases and grants them, first come first served, to clients."""

    def __init__(self, capacity: int, *, context: BaseContext | None = None) -> None:
        self._capacity = _check_capacity(capacity)
        self.context = context if context is not None else multiprocess.get_context()
        self._dir = tempfile.mkdtemp(prefix="chworkers-lease-")
        self.address = os.path.join(self._dir, "broker.sock")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.address)
        self._server.listen(128)
        self._server.setblocking(False)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._lock = threading.Lock()
        self._peers: list[_Peer] = []
        self._waiters: deque[_Request] = deque()
        self._in_use = 0
        self._granted = 0
        self._timeouts = 0
        self._reclaimed = 0
        self._auto_reclaimed: dict[str, int] = {}  # by holder, until reclaim() reports them
        self._closed = False
        self._crash: str | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        _BROKERS.add(self)

    def __repr__(self) -> str:
        with self._lock:
            state = "closed" if self._closed else "serving" if self._thread else "not started"
            return (
                f"<LeaseBroker {state}: {self._in_use} in use, {len(self._waiters)} waiting, "
                f"capacity {self._capacity}, {len(self._peers)} clients>"
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
        """Free every lease ``holder`` has (its process died); returns how many were freed.

        The count includes leases the broker already took back by itself since the last
        call (it notices a dead holder's closed socket), so a supervisor can always report
        what a crashed worker held. The holder's pending requests are refused and its
        connections dropped: call it once the holder's process is gone.
        """
        freed = 0
        with self._lock:
            for peer in self._peers:
                if peer.holder == holder:
                    freed += peer.held
                    peer.held = 0
                    peer.drop = True
            self._in_use -= freed
            self._reclaimed += freed
            freed += self._auto_reclaimed.pop(holder, 0)
        if freed:
            log.warning("reclaimed %d lease(s) from holder %s", freed, holder)
        self._wake()
        return freed

    def resize(self, capacity: int) -> None:
        """Change the capacity; leases already out above a smaller capacity are not revoked."""
        capacity = _check_capacity(capacity)
        with self._lock:
            self._capacity = capacity
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

    def stats(self) -> LeaseStats:
        with self._lock:
            by_holder: dict[str, int] = {}
            for peer in self._peers:
                if peer.held:
                    by_holder[peer.holder] = by_holder.get(peer.holder, 0) + peer.held
            waiting: dict[str, int] = {}
            for req in self._waiters:
                waiting[req.peer.holder] = waiting.get(req.peer.holder, 0) + 1
            return LeaseStats(
                capacity=self._capacity,
                in_use=self._in_use,
                waiting=len(self._waiters),
                by_holder=by_holder,
                waiting_by_holder=waiting,
                granted_total=self._granted,
                timeouts_total=self._timeouts,
                reclaimed_total=self._reclaimed,
                clients=len(self._peers),
            )

    def close(self) -> None:
        """Refuse waiting and future requests, disconnect clients and remove the socket."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
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

    # -- the serving thread ---------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._server, selectors.EVENT_READ, "server")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        next_liveness = time.monotonic() + LIVENESS_INTERVAL
        try:
            while True:
                with self._lock:
                    if self._closed:
                        break
                    timeout = self._next_timeout_locked(next_liveness)
                for key, _ in sel.select(timeout):
                    if key.data == "server":
                        self._accept(sel)
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                    else:
                        self._read(key.data)
                now = time.monotonic()
                if now >= next_liveness:
                    self._check_liveness()
                    next_liveness = now + LIVENESS_INTERVAL
                self._flush(sel, self._dispatch(now))
        except Exception as exc:  # a bug; leave a trace (and a health problem), not a hang
            log.exception("lease broker crashed")
            with self._lock:
                self._closed = True
                self._crash = f"{type(exc).__name__}: {exc}"
        finally:
            sel.close()
            self._shutdown()

    def _next_timeout_locked(self, next_liveness: float) -> float:
        deadlines = [r.deadline for r in self._waiters if r.deadline is not None]
        until = min([next_liveness, *deadlines])
        return max(0.0, until - time.monotonic())

    def _accept(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                sock, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(True)
            peer = _Peer(conn=_MPConnection(sock.detach()))
            with self._lock:
                self._peers.append(peer)
            sel.register(peer.conn, selectors.EVENT_READ, peer)

    def _read(self, peer: _Peer) -> None:
        try:
            while peer.conn.poll(0):
                self._handle(peer, peer.conn.recv())
        except (EOFError, OSError):
            with self._lock:
                peer.drop = True
        except Exception:
            # A garbled message must cost that one client its connection, not the broker.
            log.exception("lease broker: bad message from holder %s; disconnecting it", peer.holder)
            with self._lock:
                peer.drop = True

    def _handle(self, peer: _Peer, msg: Any) -> None:
        kind = msg[0]
        with self._lock:
            if kind == "hello":
                peer.holder, peer.pid = str(msg[1]), int(msg[2])
            elif kind == "acquire":
                timeout = msg[2]
                deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
                self._waiters.append(_Request(peer, int(msg[1]), deadline))
            elif kind == "release":
                if peer.held > 0:
                    peer.held -= 1
                    self._in_use -= 1
                else:
                    log.warning("holder %s released a lease it does not hold", peer.holder)
            else:
                log.warning("lease broker ignored an unknown message %r", kind)

    def _check_liveness(self) -> None:
        with self._lock:
            peers = [p for p in self._peers if p.pid is not None and p.held]
        for peer in peers:
            if peer.pid is not None and not alive(peer.pid):
                with self._lock:
                    peer.drop = True

    def _dispatch(self, now: float) -> list[tuple[_Peer, tuple[Any, ...]]]:
        """Decide, under the lock, which requests are granted, expired or refused."""
        out: list[tuple[_Peer, tuple[Any, ...]]] = []
        with self._lock:
            for peer in [p for p in self._peers if p.drop]:
                if peer.held:
                    log.warning(
                        "holder %s (pid %s) went away holding %d lease(s); reclaimed",
                        peer.holder,
                        peer.pid,
                        peer.held,
                    )
                    self._in_use -= peer.held
                    self._reclaimed += peer.held
                    self._auto_reclaimed[peer.holder] = (
                        self._auto_reclaimed.get(peer.holder, 0) + peer.held
                    )
                    peer.held = 0
                self._peers.remove(peer)
                out.append((peer, ()))  # () = close this connection
            alive = set(map(id, self._peers))
            kept: deque[_Request] = deque()
            for req in self._waiters:
                if id(req.peer) not in alive:
                    continue
                if self._closed:
                    out.append((req.peer, ("closed", req.rid, None)))
                elif self._in_use < self._capacity and not kept:
                    self._in_use += 1
                    self._granted += 1
                    req.peer.held += 1
                    out.append((req.peer, ("granted", req.rid, None)))
                elif req.deadline is not None and req.deadline <= now:
                    self._timeouts += 1
                    info = (self._capacity, self._in_use, len(self._waiters))
                    out.append((req.peer, ("timeout", req.rid, info)))
                else:
                    kept.append(req)
            self._waiters = kept
        return out

    def _flush(self, sel: selectors.BaseSelector, out: list[tuple[_Peer, tuple[Any, ...]]]) -> None:
        for peer, msg in out:
            if not msg:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    sel.unregister(peer.conn)
                with contextlib.suppress(OSError):
                    peer.conn.close()
                continue
            try:
                peer.conn.send(msg)
            except OSError:
                with self._lock:
                    peer.drop = True
                if msg[0] == "granted":
                    # The grant never arrived; the next _dispatch reclaims it with the peer.
                    pass

    def _shutdown(self) -> None:
        with self._lock:
            peers, self._peers = self._peers, []
            waiters, self._waiters = self._waiters, deque()
        for req in waiters:
            with contextlib.suppress(OSError):
                req.peer.conn.send(("closed", req.rid, None))
        for peer in peers:
            with contextlib.suppress(OSError):
                peer.conn.close()
        with contextlib.suppress(OSError):
            self._server.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if os.getpid() == self._pid:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _forget_after_fork(self) -> None:
        # A forked child must not keep the broker's sockets open (clients would never see
        # the owner die) nor remove the owner's socket file.
        self._pid = -1
        for peer in self._peers:
            with contextlib.suppress(OSError):
                peer.conn.close()
        with contextlib.suppress(OSError):
            self._server.close()
        self._peers = []
        self._waiters = deque()
        self._closed = True
        self._lock = threading.Lock()


_BROKERS: weakref.WeakSet[LeaseBroker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for broker in list(_BROKERS):
        broker._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
