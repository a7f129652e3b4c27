"""The lease broker's serving thread: its socket, its clients' messages, its queue's decisions.

:class:`LeaseServing` is the part of :class:`~chworkers.clickhouse.lease.LeaseBroker`
that runs on its one thread: it accepts clients on the Unix socket, reads their messages
(hello, acquire, got/missed/cancel, freed), drops clients whose process died, decides
under the lock who is told to take a freed slot (FIFO), sends those answers outside it,
and at the end closes every connection and removes the broker's files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import socket
import threading
import time
from typing import Any

from multiprocess.connection import Connection as _MPConnection

from chworkers.clickhouse.leaseclient import recv, send
from chworkers.clickhouse.leaseledger import LeaseLedger, Peer
from chworkers.clickhouse.leasequeue import LeaseQueue
from chworkers.clickhouse.leaseslots import CLOSED, HIGH, MAX_SESSIONS, WAITING, SlotTable

__all__ = ["LIVENESS_INTERVAL", "RECHECK_INTERVAL", "LeaseServing"]

#: The broker's logger, as before it was cut into modules (log filters keep working).
log = logging.getLogger("chworkers.clickhouse.lease")

#: How often the broker checks that its clients' processes are still alive.
LIVENESS_INTERVAL = 1.0
#: While requests wait and none has been told to go, how often the broker looks for a
#: free slot by itself (a holder that died frees its slots without saying so).
RECHECK_INTERVAL = 0.02


class LeaseServing:
    """The broker's serving thread (see the module's docstring)."""

    slots_path: str
    _capacity: int
    _dir: str
    _server: socket.socket
    _wake_r: int
    _wake_w: int
    _lock: threading.Lock
    _table: SlotTable
    _ledger: LeaseLedger
    _peers: list[Peer]
    _waiters: LeaseQueue
    _closed: bool
    _crash: str | None
    _pid: int

    def _in_use_locked(self) -> int:
        """Slots held now, as the kernel sees them (the broker itself holds none)."""
        if self._table.fd < 0:
            return 0
        return self._table.count_locked(max(self._capacity, self._table.high))

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
                    untold = self._waiters.untold
                until = next_liveness - time.monotonic()
                timeout = max(0.0, min(until, RECHECK_INTERVAL) if untold else until)
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
                self._flush(sel, self._dispatch())
        except Exception as exc:  # a bug; leave a trace (and a health problem), not a hang
            log.exception("lease broker crashed")
            with self._lock:
                self._closed = True
                self._table.words[CLOSED] = 1
                self._crash = f"{type(exc).__name__}: {exc}"
        finally:
            sel.close()
            self._shutdown()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                sock, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(True)
            peer = Peer(conn=_MPConnection(sock.detach()))
            with self._lock:
                self._peers.append(peer)
            sel.register(peer.conn, selectors.EVENT_READ, peer)

    def _read(self, peer: Peer) -> None:
        try:
            while peer.conn.poll(0):
                self._handle(peer, recv(peer.conn))
        except (EOFError, OSError):
            with self._lock:
                peer.drop = True
        except Exception:
            # A garbled message must cost that one client its connection, not the broker.
            log.exception("lease broker: bad message from holder %s; disconnecting it", peer.holder)
            with self._lock:
                peer.drop = True

    def _handle(self, peer: Peer, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "hello" and peer.row is None and not peer.drop:
            holder, pid = str(msg[1]), int(msg[2])
            with self._lock:
                row = None if self._closed else self._ledger.join(peer, holder, pid)
            if row is None:
                why = "closed" if self._closed else f"more than {MAX_SESSIONS} clients"
                send(peer.conn, ("refused", why))
                raise OSError(f"refused {holder}: {why}")
            send(peer.conn, ("welcome", self.slots_path, row))
            return
        if peer.row is None:
            raise ValueError(f"{kind!r} before hello")
        with self._lock:
            if kind == "acquire":
                self._waiters.add(peer, int(msg[1]))
            elif kind in ("got", "missed", "cancel"):
                self._waiters.answer(peer, int(msg[1]), kind)
            elif kind != "freed":  # "freed": a holder gave one back while others wait
                raise ValueError(f"unknown message {kind!r}")

    def _check_liveness(self) -> None:
        with self._lock:
            self._ledger.drop_dead()
            words = self._table.words
            if words[HIGH] > self._capacity and not self._table.any_locked(
                self._capacity, words[HIGH]
            ):
                words[HIGH] = self._capacity  # the slots above a shrunk capacity are back

    def _dispatch(self) -> list[tuple[Peer, tuple[Any, ...]]]:
        """Decide, under the lock, who is dropped, refused or told to take a slot."""
        out: list[tuple[Peer, tuple[Any, ...]]] = []
        with self._lock:
            for peer in [p for p in self._peers if p.drop]:
                self._ledger.leave(peer)
                self._peers.remove(peer)
                out.append((peer, ()))  # () = close this connection
            self._waiters.keep_only(self._peers)
            if self._closed:
                out += [(r.peer, ("closed", r.rid)) for r in self._waiters.clear()]
            elif self._waiters.untold:
                free = self._capacity - self._in_use_locked()
                out += [(r.peer, ("go", r.rid)) for r in self._waiters.decide(free)]
            self._table.words[WAITING] = len(self._waiters)
        return out

    def _flush(self, sel: selectors.BaseSelector, out: list[tuple[Peer, tuple[Any, ...]]]) -> None:
        for peer, msg in out:
            if not msg:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    sel.unregister(peer.conn)
                with contextlib.suppress(OSError):
                    peer.conn.close()
                continue
            try:
                send(peer.conn, msg)
            except OSError:
                with self._lock:
                    peer.drop = True

    def _shutdown(self) -> None:
        with self._lock:
            peers = list(self._peers)
            waiters = self._waiters.clear()
            if self._table.fd >= 0:
                self._table.words[CLOSED] = 1
                self._ledger.close()
                self._table.close()  # clients keep their own mapping of the file
        for req in waiters:
            with contextlib.suppress(OSError):
                send(req.peer.conn, ("closed", req.rid))
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
