"""Watching the connections of chworkers' HTTP servers: deadlines, closing, memory.

:class:`Deadlines` cuts off clients that send too slowly, :class:`Closer` closes
connections without resetting clients that are still sending, and :class:`ByteBudget`
bounds the request bodies all requests together hold in memory. The bounded server
(:mod:`chworkers.http.server`) and the embedded endpoint use them.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from typing import cast


class Deadlines:
    """Ends reads that take too long: past its deadline a socket's read side is shut
    down, which wakes the thread blocked reading it (the recv returns end of file) while
    the write side still works, so the thread can answer 408.

    A per-recv socket timeout alone cannot do this: a client sending a byte every few
    seconds never lets one expire.
    """

    def __init__(self, tick: float = 0.1) -> None:
        self._tick = tick
        self._armed: dict[socket.socket, float] = {}
        self._expired: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        with self._lock:
            return f"<Deadlines {len(self._armed)} armed, {len(self._expired)} expired>"

    def arm(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            if sock in self._expired:
                return  # its read side is shut down already; disarm() resets it
            self._armed[sock] = time.monotonic() + seconds
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="chworkers-http-deadlines", daemon=True
                )
                self._thread.start()

    def disarm(self, sock: socket.socket) -> bool:
        """Stop watching ``sock``; True if its deadline had passed."""
        with self._lock:
            self._armed.pop(sock, None)
            expired = sock in self._expired
            self._expired.discard(sock)
            return expired

    def expired(self, sock: socket.socket) -> bool:
        with self._lock:
            return sock in self._expired

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._tick)
            now = time.monotonic()
            with self._lock:
                # Under the lock: whoever disarms a socket before closing it knows that
                # no shutdown is under way (its descriptor may be reused once closed).
                for sock in [s for s, t in self._armed.items() if t <= now]:
                    del self._armed[sock]
                    self._expired.add(sock)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RD)


class Closer:
    """Closes answered connections gracefully, on one thread for the whole server.

    Closing a socket whose client is still sending makes the kernel answer with a
    reset, and the client then loses the response it has not read yet (a 413 or a 503).
    So the write side is shut down first and what still arrives is read and dropped
    for up to ``linger`` seconds. At most ``max_lingering`` sockets wait so; beyond that
    they are closed at once.
    """

    def __init__(self, linger: float = 2.0, max_lingering: int = 1024) -> None:
        self.linger = linger
        self.max_lingering = max_lingering
        self._pending: list[tuple[socket.socket, bytes]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._count = 0

    def close(self, sock: socket.socket, answer: bytes = b"") -> None:
        """Send ``answer`` (a small complete response, or nothing), then close ``sock``
        gracefully. Never blocks."""
        with self._lock:
            if self._stopped or self._count >= self.max_lingering:
                crowded = True
            else:
                crowded = False
                self._count += 1
                self._pending.append((sock, answer))
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="chworkers-http-closer", daemon=True
                    )
                    self._thread.start()
        if crowded:
            with contextlib.suppress(OSError):
                sock.setblocking(False)
                if answer:
                    sock.send(answer)
                sock.close()
            return
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def stop(self) -> None:
        """Close what still lingers (at once) and end the thread."""
        with self._lock:
            self._stopped = True
            running = self._thread is not None
        if running:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        else:
            self._wake_r.close()
            self._wake_w.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        deadlines: dict[socket.socket, float] = {}
        try:
            while True:
                with self._lock:
                    new, self._pending = self._pending, []
                    stopped = self._stopped
                for sock, answer in new:
                    if self._start(sock, answer):
                        deadlines[sock] = time.monotonic() + self.linger
                        sel.register(sock, selectors.EVENT_READ, None)
                    else:
                        self._done(sock)
                if stopped:
                    break
                timeout = (
                    max(0.0, min(deadlines.values()) - time.monotonic()) if deadlines else None
                )
                for key, _ in sel.select(timeout):
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                        continue
                    peer = cast(socket.socket, key.fileobj)
                    try:
                        data = peer.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        deadlines[peer] = 0.0
                now = time.monotonic()
                for sock in [s for s, t in deadlines.items() if t <= now]:
                    del deadlines[sock]
                    sel.unregister(sock)
                    self._done(sock)
        finally:
            for sock in deadlines:
                self._done(sock)
            sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _start(self, sock: socket.socket, answer: bytes) -> bool:
        try:
            sock.setblocking(False)
            if answer:
                sock.send(answer)  # small: fits the empty send buffer of a fresh socket
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return True

    def _done(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.close()
        with self._lock:
            self._count -= 1


class ByteBudget:
    """Bytes that all requests together may hold in memory (request bodies).

    A request is always let in when no other holds anything, so a single request up to
    the body size limit is served whatever the budget.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ByteBudget {self._held} of {self.limit} bytes held>"

    @property
    def held(self) -> int:
        return self._held

    def reserve(self, size: int) -> bool:
        with self._lock:
            if self._held and self._held + size > self.limit:
                return False
            self._held += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._held -= size
