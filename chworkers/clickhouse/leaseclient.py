"""The worker side of a lease: :class:`LeaseClient` (see :mod:`chworkers.clickhouse.lease`).

A client is a picklable ``(address, holder)`` pair. It connects to the broker's Unix
socket lazily, from the process that uses it (so it works after fork, spawn or
forkserver, and only that process holds the socket), and one receiver thread per process
dispatches the broker's verdicts to the threads waiting for them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from multiprocess.connection import Connection as _MPConnection

from chworkers.errors import ConfigError, PoolClosedError, PoolTimeoutError

__all__ = ["LeaseClient"]

log = logging.getLogger(__name__)

#: Extra seconds a client waits beyond its timeout for the broker's verdict.
REPLY_GRACE = 5.0


@dataclass(eq=False)
class _Session:
    """A client's connection to the broker, private to one process."""

    pid: int
    conn: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    pending: dict[int, list[Any]] = field(default_factory=dict)
    ids: Any = field(default_factory=itertools.count)
    held: int = 0
    closed: bool = False


class LeaseClient:
    """A worker process's handle on a :class:`LeaseBroker`; picklable, thread-safe."""

    def __init__(self, address: str, holder: str) -> None:
        self.address = address
        self.holder = holder
        self._session: _Session | None = None
        self._lock = threading.Lock()
        _CLIENTS.add(self)

    def __getstate__(self) -> dict[str, Any]:
        return {"address": self.address, "holder": self.holder}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["address"], state["holder"])  # type: ignore[misc]

    def __repr__(self) -> str:
        session = self._session
        held = session.held if session is not None and session.pid == os.getpid() else 0
        return f"<LeaseClient {self.holder} holding {held} via {self.address}>"

    @property
    def held(self) -> int:
        """Leases this process holds through this client."""
        session = self._session
        return session.held if session is not None and session.pid == os.getpid() else 0

    def acquire(self, timeout: float | None = None) -> None:
        """Take one lease, waiting up to ``timeout`` seconds (``None``: for ever).

        Raises :class:`~chworkers.errors.PoolTimeoutError` when none was free in time and
        :class:`~chworkers.errors.PoolClosedError` when the broker is closed or gone.
        """
        if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
            raise ConfigError(
                f"lease timeout: {timeout!r} is not a number >= 0 or None",
                key="timeout",
                value=timeout,
                expected="a number >= 0 or None",
            )
        session = self._connect()
        event = threading.Event()
        slot: list[Any] = [event, None]
        with session.lock:
            if session.closed:
                raise PoolClosedError(f"lease broker at {self.address} is gone", holder=self.holder)
            rid = next(session.ids)
            session.pending[rid] = slot
        try:
            with session.send_lock:
                session.conn.send(("acquire", rid, timeout))
        except OSError as exc:
            with session.lock:
                session.pending.pop(rid, None)
            raise PoolClosedError(f"lease broker at {self.address} is gone: {exc}") from exc
        wait = None if timeout is None else timeout + REPLY_GRACE
        if not event.wait(wait):
            with session.lock:
                # A grant arriving later is released by the receiver (no slot for it).
                if session.pending.pop(rid, None) is not None:
                    raise PoolTimeoutError(
                        f"the lease broker did not answer within {wait:g} s", holder=self.holder
                    )
        verdict, info = slot[1]
        if verdict == "granted":
            return
        if verdict == "timeout":
            capacity, in_use, waiting = info
            raise PoolTimeoutError(
                f"no connection lease within {timeout:g} s ({in_use} of {capacity} out, "
                f"{waiting} waiting across processes)",
                holder=self.holder,
            )
        raise PoolClosedError(f"the lease broker at {self.address} is closed", holder=self.holder)

    def release(self) -> None:
        """Give one lease back (asynchronously: it does not wait for the broker).

        Requests travel in order on the client's socket, so this process's next
        ``acquire`` is always decided after this release.
        """
        session = self._session
        if session is None or session.pid != os.getpid():
            log.warning("lease client %s released a lease it does not hold", self.holder)
            return
        with session.lock:
            if session.held <= 0:
                log.warning("lease client %s released a lease it does not hold", self.holder)
                return
            session.held -= 1
        with contextlib.suppress(OSError), session.send_lock:
            session.conn.send(("release",))

    def close(self) -> None:
        """Disconnect; the broker frees the leases this process still holds."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None and session.pid == os.getpid():
            with contextlib.suppress(OSError):
                session.conn.close()

    # -- internals ------------------------------------------------------------------------

    def _connect(self) -> _Session:
        session = self._session
        if session is not None and session.pid == os.getpid() and not session.closed:
            return session
        with self._lock:
            session = self._session
            if session is not None and session.pid == os.getpid() and not session.closed:
                return session
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.address)
            except OSError as exc:
                sock.close()
                raise PoolClosedError(
                    f"cannot reach the lease broker at {self.address}: {exc}", holder=self.holder
                ) from exc
            conn = _MPConnection(sock.detach())
            conn.send(("hello", self.holder, os.getpid()))
            session = _Session(pid=os.getpid(), conn=conn)
            self._session = session
        threading.Thread(
            target=self._receive, args=(session,), name="chworkers-lease-client", daemon=True
        ).start()
        return session

    def _receive(self, session: _Session) -> None:
        try:
            while True:
                verdict, rid, info = session.conn.recv()
                with session.lock:
                    slot = session.pending.pop(rid, None)
                    if verdict == "granted":
                        session.held += 1
                    if slot is not None:
                        slot[1] = (verdict, info)
                        slot[0].set()
                        continue
                if verdict == "granted":  # its requester gave up waiting
                    self.release()
        except (EOFError, OSError):
            pass
        with session.lock:
            session.closed = True
            pending, session.pending = session.pending, {}
        for slot in pending.values():
            slot[1] = ("closed", None)
            slot[0].set()

    def _forget_after_fork(self) -> None:
        session = self._session
        if session is not None:
            with contextlib.suppress(OSError):
                session.conn.close()
        self._session = None
        self._lock = threading.Lock()


_CLIENTS: weakref.WeakSet[LeaseClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's sessions (sockets, receiver threads) do not exist in a child.
    for client in list(_CLIENTS):
        client._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
