"""``insert_raw(..., compress=True)`` sends the bytes compressed by the connection's codec.

Before: ``insert_raw`` always sent its bytes as given, whatever the connection's
``compress`` option said (``Connection.raw_insert`` could compress, the supervisor's
path could not ask it to): a JSONEachRow batch crossed a network five to ten times
larger than it had to. What crosses is counted by a relay in front of the endpoint.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest


class _Relay:
    """A loopback TCP relay to ``target`` that counts the bytes clients send through it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sent = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                if count:
                    with self._lock:
                        self.sent += len(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._server.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def relay(endpoint: Any) -> Iterator[_Relay]:
    r = _Relay((endpoint.host, endpoint.port))
    try:
        yield r
    finally:
        r.close()


def test_insert_raw_compresses_when_asked(relay: _Relay, database: str, ch_client: Any) -> None:
    from chworkers import Supervisor

    ch_client.command("CREATE TABLE t (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
    rows = 20_000
    body = b"".join(b'{"id":%d,"s":"%s"}\n' % (i, b"same text" * 8) for i in range(rows))
    url = f"http://default@127.0.0.1:{relay.port}/{database}?compress=lz4"
    with Supervisor(url, workers=1) as sup:
        before = relay.sent
        assert sup.insert_raw("t", body, "JSONEachRow", rows=rows, compress=True).result(60) == rows
        compressed = relay.sent - before
        before = relay.sent
        plain = body.replace(b'"s":"same', b'"s":"SAME')  # another batch: not deduplicated
        assert sup.insert_raw("t", plain, "JSONEachRow", rows=rows).result(60) == rows
        as_given = relay.sent - before
    assert compressed < len(body) // 4 < len(body) <= as_given
    assert ch_client.command("SELECT count(), countIf(s LIKE 'SAME%') FROM t") == [
        str(2 * rows),
        str(rows),
    ]
