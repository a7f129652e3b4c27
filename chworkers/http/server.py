"""A bounded threading HTTP server: what the push, metrics and embedded endpoints share.

The standard library's ``ThreadingHTTPServer`` starts a thread for every connection,
keeps it for as long as the client likes, listens with a backlog of 5 and trusts the
body framing it is sent. This module bounds each of those:

- the listen backlog is sized (:attr:`HttpLimits.backlog`), so a burst of clients waits
  in the kernel's queue instead of being reset;
- at most :attr:`HttpLimits.max_connections` connections are served at once; beyond
  that a client is answered ``503`` with ``Retry-After`` at once and the connection is
  closed gracefully (:class:`~chworkers.http.watch.Closer`), so it sees the answer and
  not a reset;
- a connection waiting for its next request closes after ``idle_timeout``; a request
  head must arrive whole within ``header_timeout`` and each MiB of a body within
  ``body_timeout`` (:class:`~chworkers.http.watch.Deadlines`), so a client sending one
  byte a second (slowloris) holds its thread for seconds, not forever, and is answered
  ``408``;
- ``Content-Length`` and chunk sizes are parsed strictly
  (:mod:`chworkers.http.framing`): a negative, signed, non-decimal or conflicting size is
  a ``400``, never a read until the client closes;
- a declared body over the limit is answered ``413`` before the client sends it (and
  ``Expect: 100-continue`` is only answered once the head has passed every check).

The embedded endpoint serves connections its own way (it streams bodies into chDB) and
uses the pieces: :class:`~chworkers.http.limits.HttpLimits`, the framing parsers and
:mod:`chworkers.http.watch`.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, cast

from chworkers import forkguard
from chworkers.errors import HttpRequestError
from chworkers.http.framing import body_framing, http_error, plain_response, read_body, too_large
from chworkers.http.limits import HttpLimits
from chworkers.http.watch import Closer, Deadlines
from chworkers.wording import plural

log = logging.getLogger(__name__)

#: The refusal reason (:data:`~chworkers.http.limits.REFUSAL_REASONS`) of a status.
_REASON_BY_STATUS = {408: "slow", 413: "too_large"}


class BoundedHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` within :class:`HttpLimits`; handlers derive from
    :class:`BoundedHandler`. ``busy_response`` is what a client beyond
    ``max_connections`` is sent (a complete response; see :func:`plain_response`)."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BoundedHandler],
        limits: HttpLimits,
        *,
        busy_response: bytes | None = None,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.limits = limits
        self.on_refusal = on_refusal
        self.request_queue_size = limits.backlog
        self.deadlines = Deadlines()
        self.closer = Closer()
        self.busy_response = busy_response or plain_response(
            HTTPStatus.SERVICE_UNAVAILABLE,
            b"too many connections; retry later\n",
            headers={"Retry-After": str(limits.retry_after)},
        )
        self._active = 0
        self._refusals: Counter[str] = Counter()
        self._lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        forkguard.close_in_child(self.socket)  # a forked worker must not keep the port

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._active} of {self.limits.max_connections} "
            f"connections, {sum(self._refusals.values())} refused>"
        )

    @property
    def active(self) -> int:
        """Connections being served now."""
        return self._active

    @property
    def refusals(self) -> dict[str, int]:
        """Clients refused so far, by reason (see :data:`~chworkers.http.limits.REFUSAL_REASONS`)."""
        with self._lock:
            return dict(self._refusals)

    def refusal(self, reason: str) -> None:
        """Count a client refused at one of the limits (and tell ``on_refusal``)."""
        with self._lock:
            self._refusals[reason] += 1
        if self.on_refusal is not None:
            try:
                self.on_refusal(reason)
            except Exception:
                log.exception("on_refusal(%r) failed", reason)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            admitted = self._active < self.limits.max_connections
            if admitted:
                self._active += 1
        if not admitted:
            self.refusal("busy")
            log.warning(
                "refusing a connection from %s: %s open (max_connections)",
                client_address[0],
                plural(self.limits.max_connections, "connection"),
            )
            self.closer.close(request, self.busy_response)
            return
        forkguard.close_in_child(request)  # a forked worker must not keep a client waiting
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._leave()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._leave()

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1

    def shutdown_request(self, request: Any) -> None:
        self.deadlines.disarm(request)
        self.closer.close(request)

    def server_close(self) -> None:
        super().server_close()
        self.deadlines.stop()
        self.closer.stop()


class BoundedHandler(BaseHTTPRequestHandler):
    """A request handler that keeps to its server's :class:`HttpLimits`.

    Subclasses read a body with :meth:`read_body` (strictly framed, within
    ``max_body_bytes`` and ``body_timeout``); a request whose declared body is over
    ``max_body_bytes`` never reaches them: it is answered 413 from its head.
    """

    server: BoundedHTTPServer
    protocol_version = "HTTP/1.1"
    #: Largest request body a handler accepts.
    max_body_bytes: int = 64 * 1024

    _body: tuple[int | None, bool] = (None, False)
    _expect_continue = False

    def handle_one_request(self) -> None:
        limits = self.server.limits
        conn = self.connection
        conn.settimeout(limits.idle_timeout)
        try:
            if not self.rfile.peek(1):  # type: ignore[attr-defined]
                self.close_connection = True
                return
        except OSError:  # idle for too long, or the client went away
            self.close_connection = True
            return
        conn.settimeout(limits.header_timeout)
        self.server.deadlines.arm(conn, limits.header_timeout)
        try:
            super().handle_one_request()
        finally:
            self.server.deadlines.disarm(conn)

    def handle_expect_100(self) -> bool:
        # Answered in read_body, once the head has passed every check: a client
        # waiting for it must not send a body that is refused anyway.
        self._expect_continue = True
        return True

    def parse_request(self) -> bool:
        self._expect_continue = False
        if self.server.deadlines.expired(self.connection):
            self._refuse(HTTPStatus.REQUEST_TIMEOUT, "the request head took too long to arrive")
            return False
        if not super().parse_request():
            return False
        if self.server.deadlines.expired(self.connection):
            self._refuse(HTTPStatus.REQUEST_TIMEOUT, "the request head took too long to arrive")
            return False
        try:
            self._body = body_framing(self.headers)
            length = self._body[0]
            if length is not None and length > self.max_body_bytes:
                raise too_large(length, self.max_body_bytes, "body")
        except HttpRequestError as exc:
            self._refuse(exc.status, exc.message, exc.headers)
            return False
        self.connection.settimeout(self.server.limits.body_timeout)
        return True

    @property
    def framing(self) -> tuple[int | None, bool]:
        """``(content_length, chunked)`` of the body not read yet."""
        return self._body

    @property
    def has_body(self) -> bool:
        """Whether the request has a body that was not read (yet)."""
        length, chunked = self._body
        return chunked or bool(length)

    def read_body(self) -> bytes:
        """The request body, read within ``max_body_bytes`` and ``body_timeout``.

        Raises :class:`HttpRequestError` (400, 408 or 413, or what :meth:`reserve_body`
        raises) and marks the connection to be closed when the body is not usable.
        """
        length, chunked = self._body
        if not chunked and not length:
            return b""
        try:
            if length:
                self.reserve_body(length)
        except HttpRequestError:
            self.close_connection = True
            raise
        if self._expect_continue:  # the client waited: now it may send
            self._expect_continue = False
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
        deadlines = self.server.deadlines
        conn, timeout = self.connection, self.server.limits.body_timeout
        try:
            return read_body(
                cast(BinaryIO, self.rfile),
                length,
                chunked,
                self.max_body_bytes,
                progress=lambda: deadlines.arm(conn, timeout),
                on_chunk=self.reserve_body,
            )
        except HttpRequestError as exc:
            self.close_connection = True
            if deadlines.expired(self.connection):
                self.server.refusal("slow")
                raise self._slow_body() from None
            if exc.status != HTTPStatus.SERVICE_UNAVAILABLE:  # reserve_body counts its own
                self.server.refusal(_REASON_BY_STATUS.get(exc.status, "malformed"))
            raise
        except OSError as exc:
            self.close_connection = True
            if isinstance(exc, TimeoutError) or deadlines.expired(self.connection):
                self.server.refusal("slow")
                raise self._slow_body() from None
            raise
        finally:
            self._body = (None, False)
            deadlines.disarm(self.connection)

    def reserve_body(self, size: int) -> None:
        """Called before ``size`` more bytes of the body are read (the whole declared
        length, or each chunk): a subclass that bounds the memory held by all requests
        raises an :class:`HttpRequestError` (a 503) when it cannot take them."""

    def _slow_body(self) -> HttpRequestError:
        return http_error(
            HTTPStatus.REQUEST_TIMEOUT,
            f"the body arrived slower than 1 MiB in {self.server.limits.body_timeout:g} s",
        )

    def _refuse(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        """Answer an unusable request head and close the connection."""
        self.close_connection = True
        self.server.refusal(_REASON_BY_STATUS.get(status, "malformed"))
        self.refuse(status, message, headers or {})

    def refuse(self, status: int, message: str, headers: Mapping[str, str]) -> None:
        """Send an error response (subclasses answer in their own format)."""
        body = (message + "\n").encode("utf-8", "replace")
        self.reply(status, body, "text/plain; charset=utf-8", headers)

    def reply(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send a whole answer. A request body left unread closes the connection (the
        next bytes on it are no request), and a connection that closes says so, once
        (``headers`` may say it already)."""
        headers = headers or {}
        if self.has_body:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)  # a "Connection: close" sets close_connection
        if self.close_connection and not any(k.lower() == "connection" for k in headers):
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The base class's own errors (malformed request line, headers too long...):
        # in the subclass's format, and the connection closes.
        self.close_connection = True
        text = message or HTTPStatus(code).phrase
        if explain:
            text = f"{text}: {explain}"
        if not hasattr(self, "command"):
            self.command = ""
        self.server.refusal(_REASON_BY_STATUS.get(code, "malformed"))
        self.refuse(code, text, {})


__all__ = [
    "BoundedHTTPServer",
    "BoundedHandler",
]
