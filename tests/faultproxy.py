"""A real loopback TCP proxy that injects faults between a client and ClickHouse.

Modes (set with :meth:`FaultProxy.set`, optionally for the next ``times`` requests only,
and only for requests whose bytes contain ``match``):

* ``pass``: forward everything;
* ``delay``: hold each response back for ``delay`` seconds;
* ``reset``: answer the request with a TCP reset (RST) instead of forwarding it, so the
  server never sees it;
* ``drop``: forward the request, let the server process it and answer, then throw the
  answer away and reset the client's connection: the client cannot know whether the
  request was applied (the "maybe applied" case);
* ``unavailable``: answer ``503 Service Unavailable`` itself, like a load balancer with no
  healthy backend (the server never sees the request);
* ``refuse``: stop listening and cut every open connection: new connections are refused
  until another mode is set.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time

MODES = ("pass", "delay", "reset", "drop", "unavailable", "refuse")
_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 19\r\nConnection: close\r\n\r\nno healthy upstream"
)


def _rst(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """Listens on 127.0.0.1 and forwards to ``target`` (host, port), with faults."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._mode = "pass"
        self._times: int | None = None
        self._match: bytes | None = None
        self._delay = 0.0
        self._clients: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = False
        self.port = port
        self.counts = {
            "connections": 0,
            "requests": 0,
            "delayed": 0,
            "reset": 0,
            "dropped": 0,
            "unavailable": 0,
            "request_bytes": 0,  # bytes sent by clients to the server (headers too)
        }
        self._listen()
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"<FaultProxy :{self.port} -> {self.target[0]}:{self.target[1]} mode={self._mode}>"

    def set(
        self,
        mode: str = "pass",
        *,
        times: int | None = None,
        delay: float = 0.0,
        match: bytes | None = None,
    ) -> None:
        """Switch mode; ``times`` limits it to that many matching requests, then ``pass``."""
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {MODES}")
        with self._lock:
            was_refusing = self._mode == "refuse"
            self._mode, self._times, self._delay, self._match = mode, times, delay, match
            clients = list(self._clients) if mode == "refuse" else []
        if mode == "refuse":
            listener, self._listener = self._listener, None
            if listener is not None:
                listener.close()
            for sock in clients:
                _rst(sock)
        elif was_refusing:
            self._listen()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            clients = list(self._clients)
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        for sock in clients:
            _rst(sock)
        self._thread.join(2)

    # -- internals ------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def _take(self, mode: str, request: bytes) -> bool:
        """Whether ``request`` gets the fault ``mode`` (consuming one of ``times``)."""
        with self._lock:
            if self._mode != mode or (self._match is not None and self._match not in request):
                return False
            if self._times is not None:
                self._times -= 1
                if self._times <= 0:
                    self._mode = "pass"
            self.counts[
                {"delay": "delayed", "reset": "reset", "drop": "dropped"}.get(mode, mode)
            ] += 1
            return True

    def _accept_loop(self) -> None:
        while not self._closed:
            listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            client.settimeout(None)
            with self._lock:
                self._clients.add(client)
                self.counts["connections"] += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            self._pump(client, upstream)
        except OSError:
            pass
        finally:
            with self._lock:
                self._clients.discard(client)
            if upstream is None:
                _rst(client)  # the server is unreachable: the client sees a reset
            else:
                client.close()
                upstream.close()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        request = b""  # bytes of the request being answered (for match)
        answering = False
        try:
            while True:
                for key, _ in sel.select(1.0):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(65536)
                    if not data:
                        return
                    if src is client:
                        if answering:
                            request, answering = b"", False
                        request += data
                        with self._lock:
                            self.counts["request_bytes"] += len(data)
                            if len(request) == len(data):
                                self.counts["requests"] += 1
                        if self._take("reset", request):
                            _rst(client)
                            return
                        if self._take("unavailable", request):
                            client.sendall(_UNAVAILABLE)
                            return
                        upstream.sendall(data)
                        continue
                    if not answering:
                        answering = True
                        if self._take("drop", request):
                            self._drain(upstream)
                            _rst(client)
                            return
                        if self._take("delay", request):
                            time.sleep(self._delay)
                    client.sendall(data)
        finally:
            sel.close()

    @staticmethod
    def _drain(upstream: socket.socket) -> None:
        """Read the rest of the server's answer so it has certainly finished the request."""
        upstream.settimeout(0.1)
        with contextlib.suppress(OSError):
            while upstream.recv(65536):
                pass
