"""The worker side of a lease: :class:`LeaseClient` (see :mod:`chworkers.clickhouse.lease`).

A client is a picklable ``(address, holder)`` pair. From the process that uses it (so it
works after fork, spawn or forkserver) it connects to the broker's Unix socket once, is
given a row of counters, and maps the broker's lease file (:mod:`~chworkers.clickhouse.leaseslots`).

Taking a lease is then local: lock a free slot of the file (one system call) and note it
in the shared table; returning it is unlocking the slot. The broker is only asked when
no slot is free or others already wait: the request joins its FIFO queue, and the
broker tells the requests at the head, in order, when to take a slot that was freed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import socket
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from multiprocess.connection import Connection as _MPConnection

from chworkers import timeouts
from chworkers.clickhouse.leaseslots import GRANTED, HELD, TIMEOUTS, SlotTable
from chworkers.errors import PoolClosedError, PoolError, PoolTimeoutError

__all__ = ["LeaseClient", "recv", "send"]

log = logging.getLogger(__name__)

#: Seconds a client waits for the broker to answer its hello.
HELLO_TIMEOUT = 10.0


def send(conn: Any, msg: tuple[Any, ...]) -> None:
    """One message to or from the broker (plain pickle: tuples of str and int)."""
    conn.send_bytes(pickle.dumps(msg, protocol=5))


def recv(conn: Any) -> tuple[Any, ...]:
    msg = pickle.loads(conn.recv_bytes(4096))
    if not isinstance(msg, tuple) or not msg:
        raise ValueError(f"not a lease message: {msg!r}")
    return msg


@dataclass(eq=False)
class _Session:
    """A client's link to the broker and its lease file, private to one process."""

    pid: int
    conn: Any
    table: SlotTable
    row: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    pending: dict[int, list[Any]] = field(default_factory=dict)
    ids: Any = field(default_factory=itertools.count)
    mine: list[int] = field(default_factory=list)  # slots this process holds
    closed: bool = False

    def take(self) -> bool:
        """Lock a free slot; call with ``lock`` held. Slots the table says are free come
        first; then the others, whose holder may have died since."""
        table, mine = self.table, self.mine
        capacity = table.capacity
        if table.high > capacity and table.any_locked(capacity, table.high):
            return False  # shrunk, and the slots above the new capacity are still out
        start = self.row % capacity if capacity else 0
        order = itertools.chain(range(start, capacity), range(start))
        later = []
        for slot in order:
            if slot in mine:
                continue
            if table.owner(slot):
                later.append(slot)
            elif table.try_lock(slot):
                return self._took(slot)
        for slot in later:
            if table.try_lock(slot):
                return self._took(slot)
        return False

    def _took(self, slot: int) -> bool:
        self.table.set_owner(slot, self.row + 1)
        self.mine.append(slot)
        self.table.add(self.row, HELD, 1)
        self.table.add(self.row, GRANTED, 1)
        return True

    def give_back(self) -> bool:
        """Unlock one slot this process holds; call with ``lock`` held. True when
        requests wait at the broker (it must hear that a slot is free)."""
        slot = self.mine.pop()
        table = self.table
        if table.owner(slot) == self.row + 1:
            table.set_owner(slot, 0)
        table.add(self.row, HELD, -1)
        table.unlock(slot)
        return table.waiting > 0

    def tell(self, msg: tuple[Any, ...]) -> None:
        with self.send_lock:
            send(self.conn, msg)


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
        return f"<LeaseClient {self.holder} holding {self.held} via {self.address}>"

    @property
    def held(self) -> int:
        """Leases this process holds through this client."""
        session = self._session
        return len(session.mine) if session is not None and session.pid == os.getpid() else 0

    def acquire(self, timeout: float | None = None) -> None:
        """Take one lease, waiting up to ``timeout`` seconds (``None``: no limit, as
        everywhere in chworkers' API; see :mod:`chworkers.timeouts`).

        Raises :class:`~chworkers.errors.PoolTimeoutError` when none was free in time,
        :class:`~chworkers.errors.PoolClosedError` when the broker is closed or gone and
        :class:`~chworkers.errors.ConfigError` for a ``timeout`` that is not a number >= 0.
        """
        timeout = timeouts.resolve(timeout, None, name="lease timeout")
        session = self._connect()
        with session.lock:
            self._check_open(session)
            # Nobody overtakes a request that waits at the broker.
            if session.table.waiting == 0 and session.take():
                return
            if timeout == 0:
                session.table.add(session.row, TIMEOUTS, 1)
                raise self._timeout_error(session, timeout)
            rid = next(session.ids)
            event = threading.Event()
            slot: list[Any] = [event, None]
            session.pending[rid] = slot
        try:
            session.tell(("acquire", rid))
        except OSError as exc:
            with session.lock:
                session.pending.pop(rid, None)
            raise PoolClosedError(
                f"lease broker at {self.address} is gone: {exc}", holder=self.holder
            ) from exc
        if not event.wait(timeout):
            with session.lock:
                gave_up = session.pending.pop(rid, None) is not None
                if gave_up:
                    session.table.add(session.row, TIMEOUTS, 1)
            if gave_up:  # else the grant came just now: it is ours
                with contextlib.suppress(OSError):
                    session.tell(("cancel", rid))
                raise self._timeout_error(session, timeout)
        if slot[1] != "granted":
            raise PoolClosedError(
                f"the lease broker at {self.address} is closed", holder=self.holder
            )

    def release(self) -> None:
        """Give one lease back; a request waiting at the broker may take it at once."""
        session = self._session
        if session is None or session.pid != os.getpid():
            log.warning("lease client %s released a lease it does not hold", self.holder)
            return
        with session.lock:
            if not session.mine:
                log.warning("lease client %s released a lease it does not hold", self.holder)
                return
            others_wait = session.give_back()
        if others_wait:
            with contextlib.suppress(OSError):
                session.tell(("freed",))

    def close(self) -> None:
        """Disconnect; the leases this process still holds are freed."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None and session.pid == os.getpid():
            with session.lock:
                session.closed = True
                session.mine.clear()
                session.table.close()  # closing the description frees its slots
            with contextlib.suppress(OSError):
                session.conn.close()

    # -- internals ------------------------------------------------------------------------

    def _check_open(self, session: _Session) -> None:
        if session.closed:
            raise PoolClosedError(f"lease broker at {self.address} is gone", holder=self.holder)
        if session.table.closed:
            raise PoolClosedError(
                f"the lease broker at {self.address} is closed", holder=self.holder
            )

    def _timeout_error(self, session: _Session, timeout: float | None) -> PoolTimeoutError:
        table = session.table
        capacity = table.capacity
        # Slots this process holds look free through its own description.
        out = table.count_locked(max(capacity, table.high)) + len(session.mine)
        return PoolTimeoutError(
            f"no connection lease within {timeout:g} s ({out} of {capacity} out, "
            f"{table.waiting} waiting across processes)",
            holder=self.holder,
        )

    def _connect(self) -> _Session:
        session = self._session
        if session is not None and session.pid == os.getpid() and not session.closed:
            return session
        with self._lock:
            session = self._session
            if session is not None and session.pid == os.getpid() and not session.closed:
                return session
            if session is not None and session.pid == os.getpid():
                # The broker dropped this process. Its slots are still locked through the
                # old description: keep them, and start over only once none is held.
                with session.lock:
                    if session.mine:
                        raise PoolClosedError(
                            f"the lease broker at {self.address} dropped {self.holder}",
                            holder=self.holder,
                        )
                    session.table.close()
                with contextlib.suppress(OSError):
                    session.conn.close()
            session = self._session = self._hello()
        threading.Thread(
            target=self._receive, args=(session,), name="chworkers-lease-client", daemon=True
        ).start()
        return session

    def _hello(self) -> _Session:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.address)
        except OSError as exc:
            sock.close()
            raise PoolClosedError(
                f"cannot reach the lease broker at {self.address}: {exc}", holder=self.holder
            ) from exc
        conn = _MPConnection(sock.detach())
        try:
            send(conn, ("hello", self.holder, os.getpid()))
            if not conn.poll(HELLO_TIMEOUT):
                raise OSError(f"no answer within {HELLO_TIMEOUT:g} s")
            kind, *body = recv(conn)
            if kind != "welcome":
                raise OSError(f"refused: {body[-1] if body else kind}")
            path, row = str(body[0]), int(body[1])
            table = SlotTable(path)
        except (OSError, EOFError, ValueError, PoolError) as exc:
            conn.close()
            raise PoolClosedError(
                f"the lease broker at {self.address} did not take {self.holder}: {exc}",
                holder=self.holder,
            ) from exc
        return _Session(pid=os.getpid(), conn=conn, table=table, row=row)

    def _receive(self, session: _Session) -> None:
        try:
            while True:
                kind, rid = recv(session.conn)[:2]
                if kind == "go":
                    self._go(session, rid)
                elif kind == "closed":
                    self._settle(session, rid, "closed")
        except (EOFError, OSError, ValueError):
            pass
        with session.lock:
            session.closed = True
            pending, session.pending = session.pending, {}
        for slot in pending.values():
            slot[1] = "closed"
            slot[0].set()

    def _go(self, session: _Session, rid: int) -> None:
        """The broker says request ``rid`` may take a freed slot now."""
        with session.lock:
            slot = session.pending.get(rid)
            if slot is None:
                return  # it gave up (its cancel is on the way to the broker)
            took = not session.closed and session.take()
            if took:
                del session.pending[rid]
                slot[1] = "granted"
                slot[0].set()
        session.tell(("got" if took else "missed", rid))

    def _settle(self, session: _Session, rid: int | None, verdict: str) -> None:
        with session.lock:
            rids = list(session.pending) if rid is None else [rid]
            slots = [session.pending.pop(r) for r in rids if r in session.pending]
        for slot in slots:
            slot[1] = verdict
            slot[0].set()

    def _forget_after_fork(self) -> None:
        session = self._session
        if session is not None:
            with contextlib.suppress(OSError):
                session.conn.close()
            session.table.forget()  # the parent's slots stay the parent's
        self._session = None
        self._lock = threading.Lock()


_CLIENTS: weakref.WeakSet[LeaseClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's sessions (sockets, lease file, receiver threads) are not the child's.
    for client in list(_CLIENTS):
        client._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
