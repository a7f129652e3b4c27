"""Regression test: an answer of the push endpoint says ``Connection: close`` once.

The 503 a push client gets while the daemon stops carries ``Connection: close`` among its
headers; the handler added its own as well, so the answer said it twice. Each HTTP
endpoint now sends its answers through ``BoundedHandler.reply``, which says it once.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.ingest import IngestServer, Route
from chworkers.daemon.options import HttpSettings, SpoolSettings
from chworkers.daemon.spool import Spool


def _answer_head(port: int, request: bytes) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                break
            data += more
    return data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")


def test_a_stopping_daemons_503_says_connection_close_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False, policy="reject"))
    batcher = Batcher(spool, lambda batch: None, limits=BatchLimits(max_delay=0.01))
    server = IngestServer({"events": Route("events", "push")}, batcher, HttpSettings(port=0))
    server.start()
    try:
        batcher.close()  # what a stopping daemon does before the endpoint goes
        port = urlsplit(server.url).port
        assert port is not None
        body = b'{"a": 1}\n'
        head = _answer_head(
            port,
            b"POST /ingest/events HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body),
        )
    finally:
        server.stop()
    assert head[0].startswith("HTTP/1.1 503 "), head
    connection = [line for line in head if line.lower().startswith("connection:")]
    assert connection == ["Connection: close"], head
