"""Regression test: request header lines that are not ``Name: value`` are a 400.

The endpoint read request heads with http.client's ``parse_headers``, which runs the
e-mail parser over them: a line without a colon silently ended the headers there, and
the ones after it (``Content-Length`` among them) were taken for the body; a name with
a blank in it was dropped. ClickHouse (Poco) answers such a head with a 400, and so
does the endpoint now, which reads the head line by line (a third of its own CPU for a
small insert went into the e-mail parser).
"""

from __future__ import annotations

import socket

from httpcall import call

from chworkers.embedded import EmbeddedClickHouse


def _raw(endpoint: EmbeddedClickHouse, request: bytes) -> bytes:
    """The response to one request sent as these bytes (the connection then closes)."""
    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while data := sock.recv(65536):
            out += data
        return out


def test_request_headers_as_clickhouse_reads_them(endpoint: EmbeddedClickHouse) -> None:
    head = "POST /?query=SELECT%20currentDatabase() HTTP/1.1\r\nHost: x\r\n"
    # Case-insensitive names, blanks around values, an obsolete folded line.
    ok = _raw(
        endpoint,
        (
            head + "x-clickhouse-database:   system  \r\nX-Note: one\r\n two\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        ).encode(),
    )
    assert ok.startswith(b"HTTP/1.1 200") and b"\r\nsystem\n\r\n" in ok, ok
    for bad in (
        head + "No colon here\r\n\r\n",
        head + "Bad Name: x\r\n\r\n",
        head + ": no name\r\n\r\n",
        head + "".join(f"X-H{i}: {i}\r\n" for i in range(101)) + "\r\n",
        head + "X-Long: " + "x" * 70_000 + "\r\n\r\n",
    ):
        answer = _raw(endpoint, bad.encode())
        assert answer.startswith(b"HTTP/1.1 400"), (bad[:80], answer[:200])
    assert call(endpoint, "/", b"SELECT 1")[2] == b"1\n"
