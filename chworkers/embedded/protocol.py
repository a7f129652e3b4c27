"""HTTP/1.1 on a socket: request heads, bodies (length or chunked), responses.

The standard library's ``http.server`` caps the request line at 64 KiB and hides the
body framing; ClickHouse accepts URLs up to ``http_max_uri_size`` (1 MiB), and the
endpoint must stream bodies of any size into chDB, so this small layer does its own
framing. Responses are written either with a ``Content-Length`` or chunked.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from typing import BinaryIO

from chworkers.embedded.exceptions import (
    BAD_ARGUMENTS,
    BAD_REQUEST_PARAMETER,
    CANNOT_READ_ALL_DATA,
    QUERY_IS_TOO_LARGE,
    clickhouse_error,
)
from chworkers.errors import HttpRequestError
from chworkers.http.framing import MAX_CHUNK_LINE, body_framing, chunk_size

#: ClickHouse's default http_max_uri_size.
MAX_URI_SIZE = 1 << 20
MAX_HEADER_LINE = 1 << 16
#: As the standard library's http.client (and Poco's default for ClickHouse).
MAX_HEADERS = 100
READ_CHUNK = 1 << 20


class ClientGone(Exception):
    """The peer closed the connection or stopped sending."""


class BadRequest(Exception):
    """The request is not valid HTTP: answer 400 and close."""


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: Message
    body: Body
    path: str = ""
    query_string: str = ""
    keep_alive: bool = True

    def header(self, name: str, default: str | None = None) -> str | None:
        value = self.headers.get(name)
        return default if value is None else str(value)


class Body:
    """The request body, framed by Content-Length or chunked transfer encoding.

    The connection sets two hooks: ``guard`` wraps every read from the socket (it gives
    the read a deadline, so a client sending a byte at a time cannot hold the
    connection), and ``before_first_read`` runs once before the first one (it answers
    ``Expect: 100-continue``: a client is asked for its body only when the request is
    read, never for a request refused from its head).
    """

    def __init__(self, rfile: BinaryIO, length: int | None, chunked: bool) -> None:
        self._rfile = rfile
        #: The announced Content-Length (None when chunked or absent).
        self.length = None if chunked else length
        self._remaining = length if length is not None else 0
        self._chunked = chunked
        self._chunk_left = 0
        self.finished = not chunked and self._remaining == 0
        self.bytes_read = 0
        self.guard: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext
        self.before_first_read: Callable[[], None] | None = None
        self._broken: Exception | None = None

    def read(self, n: int = READ_CHUNK) -> bytes:
        """Up to ``n`` bytes; ``b''`` once the body is complete."""
        if self.finished:
            return b""
        if self._broken is not None:
            raise self._broken
        if self.before_first_read is not None:
            callback, self.before_first_read = self.before_first_read, None
            callback()
        try:
            with self.guard():
                data = self._read_chunked(n) if self._chunked else self._read_plain(n)
        except Exception as exc:  # the framing is lost: nothing after this can be read
            self._broken = exc
            raise
        self.bytes_read += len(data)
        return data

    def _read_plain(self, n: int) -> bytes:
        data = self._rfile.read(min(n, self._remaining))
        if not data:
            raise clickhouse_error(
                CANNOT_READ_ALL_DATA,
                f"Cannot read all data from the request body: the client closed the "
                f"connection with {self._remaining} of the announced bytes missing",
            )
        self._remaining -= len(data)
        if self._remaining == 0:
            self.finished = True
        return data

    def _read_chunked(self, n: int) -> bytes:
        if self._chunk_left == 0:
            line = self._rfile.readline(MAX_CHUNK_LINE)
            if not line.endswith(b"\n") and len(line) < MAX_CHUNK_LINE:
                raise self._truncated()
            try:
                size = chunk_size(line)
            except HttpRequestError as exc:
                # ClickHouse: "Unexpected data instead of HTTP chunk header"; a 400 here
                # (ClickHouse's 500 for this code would make clients retry it).
                err = clickhouse_error(
                    BAD_REQUEST_PARAMETER, f"Invalid chunked request body: {exc.message}"
                )
                err.http_status = 400
                raise err from None
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = self._rfile.readline(MAX_HEADER_LINE)
                    if not trailer:
                        raise self._truncated()
                    if trailer in (b"\r\n", b"\n"):
                        break
                self.finished = True
                return b""
            self._chunk_left = size
        data = self._rfile.read(min(n, self._chunk_left))
        if not data:
            raise self._truncated()
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._rfile.readline(MAX_HEADER_LINE) not in (b"\r\n", b"\n"):
            raise self._truncated()
        return data

    def _truncated(self) -> Exception:
        return clickhouse_error(
            CANNOT_READ_ALL_DATA,
            "Cannot read all data from the chunked request body: it ended before its last chunk",
        )

    def read_all(self, limit: int) -> bytes:
        """The whole (rest of the) body, refusing more than ``limit`` bytes (at once, from
        the head, when the Content-Length announces more)."""
        if self.length is not None and self.length - self.bytes_read > limit:
            raise self._too_large(limit)
        parts: list[bytes] = []
        total = 0
        while True:
            data = self.read()
            if not data:
                return b"".join(parts)
            total += len(data)
            if total > limit:
                raise self._too_large(limit)
            parts.append(data)

    def _too_large(self, limit: int) -> Exception:
        return clickhouse_error(
            QUERY_IS_TOO_LARGE,
            f"The request body is larger than {limit} bytes, the limit for a "
            "query that is not an INSERT with inline data",
        )

    def drain(self, limit: int) -> bool:
        """Discard what is left; False if more than ``limit`` bytes remain or it fails.

        A client still waiting for ``100 Continue`` has sent nothing: it is not asked
        for a body only to have it dropped (False: the connection closes instead).
        """
        if self.finished:
            return True
        if self.before_first_read is not None or self._broken is not None:
            return False
        if self.length is not None and self._remaining > limit:
            return False
        total = 0
        try:
            while data := self.read():
                total += len(data)
                if total > limit:
                    return False
        except Exception:
            return False
        return True


def read_request(rfile: BinaryIO) -> Request | None:
    """The next request head on a connection, or None if the peer closed it cleanly."""
    try:
        line = rfile.readline(MAX_URI_SIZE + 64)
    except (ConnectionError, TimeoutError, OSError):
        return None
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise clickhouse_error(
            BAD_ARGUMENTS,
            f"The request URI is longer than http_max_uri_size ({MAX_URI_SIZE} bytes); "
            "send long queries in the POST body instead",
        )
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"malformed request line {line[:100]!r}")
    method, target, version = parts
    headers = _read_headers(rfile)
    try:
        length, chunked = body_framing(headers)
    except HttpRequestError as exc:
        raise BadRequest(exc.message) from None
    conn_hdr = str(headers.get("Connection", "")).lower()
    keep = "close" not in conn_hdr if version == "HTTP/1.1" else "keep-alive" in conn_hdr
    path, _, qs = target.partition("?")
    return Request(
        method=method.upper(),
        target=target,
        version=version,
        headers=headers,
        body=Body(rfile, length, chunked),
        path=path,
        query_string=qs,
        keep_alive=keep,
    )


def _read_headers(rfile: BinaryIO) -> Message:
    """The header fields up to the blank line, folded lines joined.

    Read line by line instead of by http.client's ``parse_headers``, which runs the
    e-mail parser over them: that took a third of the endpoint's own CPU for a small
    insert. A line that is no ``Name: value`` is a 400, as it is for ClickHouse (Poco).
    """
    fields: list[tuple[str, str]] = []
    while True:
        line = rfile.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            raise BadRequest(f"a request header line is longer than {MAX_HEADER_LINE} bytes")
        if line in (b"\r\n", b"\n", b""):
            break
        text = line.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and fields:  # obsolete line folding: one more line
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {text.strip()}")
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip() or " " in name:
            raise BadRequest(f"malformed request header line {line[:100]!r}")
        if len(fields) >= MAX_HEADERS:
            raise BadRequest(f"more than {MAX_HEADERS} request headers")
        fields.append((name, value.strip()))
    headers = Message()
    for name, value in fields:
        headers[name] = value
    return headers


@dataclass
class Response:
    """Writes one response; headers go out with the first body bytes."""

    sock: socket.socket
    keep_alive: bool
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunked: bool = False
    headers_sent: bool = False
    bytes_sent: int = 0
    #: Called once right before the response's last bytes are sent.
    before_final: Callable[[], None] | None = None
    #: Set when the request failed after a 200 status went out (a mid-stream error).
    failed: bool = False
    _pending: bytes = b""
    _holding: bool = False
    _final: bytes = b""

    def set_header(self, name: str, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        self.headers.append((name, value))

    def _head(self, content_length: int | None) -> bytes:
        reason = (
            HTTPStatus(self.status).phrase if self.status in HTTPStatus._value2member_map_ else ""
        )
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        lines.extend(f"{k}: {v}" for k, v in self.headers)
        if content_length is not None:
            lines.append(f"Content-Length: {content_length}")
        else:
            lines.append("Transfer-Encoding: chunked")
        lines.append("Connection: Keep-Alive" if self.keep_alive else "Connection: Close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ClientGone(str(exc)) from exc
        self.bytes_sent += len(data)

    def hold_final(self) -> None:
        """Keep the response's last bytes until :meth:`release_final`.

        A client sends its next request as soon as a response is complete, so whatever
        the request holds (its session) must be released before the last byte goes.
        """
        self._holding = True

    def release_final(self) -> None:
        self._holding = False
        final, self._final = self._final, b""
        if final:
            self.fire_before_final()
            self._send(final)

    def _send_final(self, data: bytes) -> None:
        if self._holding:
            self._final += data
        else:
            self.fire_before_final()
            self._send(data)

    def fire_before_final(self) -> None:
        """Run ``before_final`` once: just before the last byte, or when giving up."""
        callback, self.before_final = self.before_final, None
        if callback is not None:
            callback()

    def send_whole(self, body: bytes) -> None:
        """Headers and a complete body with Content-Length."""
        self.headers_sent = True
        self._send_final(self._head(len(body)) + body)

    def start_chunked(self) -> None:
        """Commit to a chunked body; the head goes out with the first chunk."""
        self.headers_sent = True
        self.chunked = True
        self._pending = self._head(None)

    def write_chunk(self, data: bytes) -> None:
        if data:
            self._send(self._take_pending() + b"%x\r\n" % len(data) + data + b"\r\n")

    def end_chunked(self) -> None:
        self._send_final(self._take_pending() + b"0\r\n\r\n")

    def _take_pending(self) -> bytes:
        pending, self._pending = self._pending, b""
        return pending
