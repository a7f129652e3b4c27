"""One client connection: read requests, route them, answer errors as ClickHouse does.

A connection thread serves requests one after another (HTTP/1.1 keep-alive). A
client's mistake (bad SQL, a broken body, wrong credentials) is answered with
ClickHouse's error body and ``X-ClickHouse-Exception-Code`` and logged at debug level
without a traceback; only a bug in the endpoint itself logs one.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

from chworkers.embedded import request as request_mod
from chworkers.embedded import stats as stats_mod
from chworkers.embedded.codecs import decoder_for
from chworkers.embedded.exceptions import (
    AUTHENTICATION_FAILED,
    SOCKET_TIMEOUT,
    UNSUPPORTED_METHOD,
    clickhouse_error,
    response_body,
)
from chworkers.embedded.execute import Context, execute
from chworkers.embedded.protocol import (
    READ_CHUNK,
    BadRequest,
    ClientGone,
    Request,
    Response,
    read_request,
)
from chworkers.errors import ServerError
from chworkers.http.limits import HttpLimits
from chworkers.http.watch import Closer, Deadlines

log = logging.getLogger(__name__)

#: A request body left unread after an error is drained up to this size so the
#: client still reads the error instead of a reset; beyond it the connection closes.
DRAIN_LIMIT = 1 << 30
_NO_HANDLER = (
    "There is no handle {path}\n\nUse / or /ping for health checks.\n"
    "Send queries with POST or GET /?query=...\n"
)


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def check(self, user: str, password: str) -> None:
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_password = hmac.compare_digest(password.encode(), self.password.encode())
        if not (ok_user and ok_password):
            raise clickhouse_error(
                AUTHENTICATION_FAILED,
                f"{user}: Authentication failed: password is incorrect, or there is no "
                "user with such name",
            )


class Connection:
    """Serves the requests of one accepted socket until it closes or the endpoint stops."""

    def __init__(
        self,
        ctx: Context,
        credentials: Credentials | None,
        sock: socket.socket,
        limits: HttpLimits,
        request_timeout: float,
        deadlines: Deadlines,
        closer: Closer,
    ) -> None:
        self.ctx = ctx
        self.credentials = credentials
        self.sock = sock
        self.limits = limits
        self.idle_timeout = limits.idle_timeout
        self.request_timeout = request_timeout
        self.deadlines = deadlines
        self.closer = closer
        self.busy = False
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def close_if_idle(self) -> bool:
        """Called on shutdown: wake an idle connection so its thread ends."""
        with self._lock:
            self.stopping.set()
            if self.busy:
                return False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        return True

    def run(self) -> None:
        rfile = cast(BinaryIO, self.sock.makefile("rb", buffering=READ_CHUNK))
        self.ctx.stats.connection_opened()
        # A client may still be sending what was refused: closing now would reset the
        # connection and lose the answer, so the closer drains it (off this thread).
        linger = False
        try:
            while not self.stopping.is_set():
                self.sock.settimeout(self.idle_timeout)
                try:
                    if not rfile.peek(1):  # type: ignore[attr-defined]
                        return
                except OSError:  # idle for keep_alive_timeout, or the client went away
                    return
                # From its first byte, a request head has header_timeout to arrive whole:
                # a client sending it a byte at a time (slowloris) is cut off.
                self.sock.settimeout(self.limits.header_timeout)
                self.deadlines.arm(self.sock, self.limits.header_timeout)
                error: Exception | None = None
                try:
                    req = read_request(rfile)
                except (ServerError, BadRequest) as exc:
                    req, error = None, exc
                finally:
                    too_slow = self.deadlines.disarm(self.sock)
                if too_slow:
                    self.ctx.stats.timed_out()
                    log.debug(
                        "closing a connection whose request head took over %g s",
                        self.limits.header_timeout,
                    )
                    return
                if isinstance(error, ServerError):  # e.g. a URI beyond http_max_uri_size
                    self._send_error(Response(self.sock, keep_alive=False), error)
                    linger = True
                    return
                if error is not None:
                    log.debug("bad HTTP request: %s", error)
                    self._send_plain(Response(self.sock, keep_alive=False), 400, f"{error}\n")
                    linger = True
                    return
                if req is None:
                    return
                req.body.guard = self._body_deadline
                if (req.header("Expect") or "").lower() == "100-continue":
                    req.body.before_first_read = self._send_continue
                with self._lock:
                    self.busy = True
                self.sock.settimeout(self.request_timeout)
                try:
                    keep = self.handle(req)
                finally:
                    with self._lock:
                        self.busy = False
                if not keep:
                    linger = not req.body.finished
                    return
        except (ClientGone, OSError) as exc:
            log.debug("connection ended: %s", exc)
        finally:
            self.ctx.stats.connection_closed()
            self.deadlines.disarm(self.sock)  # before the descriptor can be reused
            with contextlib.suppress(OSError):
                rfile.close()
            if linger:
                self.closer.close(self.sock)
            else:
                with contextlib.suppress(OSError):
                    self.sock.close()

    def _send_continue(self) -> None:
        try:
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        except OSError as exc:
            raise ClientGone(str(exc)) from exc

    @contextlib.contextmanager
    def _body_deadline(self) -> Iterator[None]:
        """Each read of the body has ``body_timeout`` (a piece is at most 1 MiB), so a
        client sending a byte at a time is answered SOCKET_TIMEOUT as ClickHouse does
        when its receive timeout passes."""
        timeout = self.limits.body_timeout
        self.deadlines.arm(self.sock, timeout)
        try:
            yield
        except (ServerError, OSError) as exc:
            if self.deadlines.disarm(self.sock) or isinstance(exc, TimeoutError):
                raise self._timed_out(timeout) from None
            raise
        if self.deadlines.disarm(self.sock):  # cut short: the read side is shut down
            raise self._timed_out(timeout)

    def _timed_out(self, timeout: float) -> ServerError:
        self.ctx.stats.timed_out()
        return clickhouse_error(
            SOCKET_TIMEOUT,
            f"Timeout exceeded while reading from socket ({self._peer()}, "
            f"{int(timeout * 1000)} ms)",
        )

    def _peer(self) -> str:
        try:
            host, port = self.sock.getpeername()[:2]
        except OSError:
            return "peer gone"
        return f"peer: {host}:{port}"

    def handle(self, req: Request) -> bool:
        """Answer one request; returns whether the connection may serve another."""
        resp = Response(self.sock, keep_alive=req.keep_alive and not self.stopping.is_set())
        resp.set_header("Keep-Alive", f"timeout={int(self.idle_timeout)}")
        try:
            self._route(req, resp)
        except ServerError as err:
            log.debug("%s %s failed: %s", req.method, req.path, err.message)
            resp.failed = True
            if resp.headers_sent:
                return False
            if not req.body.drain(DRAIN_LIMIT):
                resp.keep_alive = False
            self._send_error(resp, err)
        except ClientGone:
            resp.failed = True
            return False
        except Exception as exc:  # a bug in the endpoint: answer 500, keep serving
            log.exception("internal error while serving %s %s", req.method, req.path)
            resp.failed = True
            if resp.headers_sent:
                return False
            resp.keep_alive = False
            internal = clickhouse_error((1001, "STD_EXCEPTION"), f"Internal error: {exc!r}")
            self._send_error(resp, internal)
            return False
        finally:
            resp.fire_before_final()  # if nothing was sent (the client went away)
        return resp.keep_alive and req.body.finished

    def _route(self, req: Request, resp: Response) -> None:
        if req.path in ("/ping", "/replicas_status"):
            self._send_plain(resp, 200, "Ok.\n", head_only=req.method == "HEAD")
            return
        if req.path == stats_mod.PATH:
            reset = "reset=1" in req.query_string.split("&")
            resp.set_header("Content-Type", "application/json")
            resp.send_whole(self.ctx.stats.to_json(reset))
            return
        if req.path == "/":
            # Counted out just before the last byte: a client's next request must never
            # overlap its previous one in max_requests_in_flight.
            stats = self.ctx.stats
            stats.request_started()
            resp.before_final = lambda: stats.request_ended(resp.failed or resp.status >= 400)
        self._query(req, resp)

    def _query(self, req: Request, resp: Response) -> None:
        if req.path != "/":
            resp.status = 404
            self._send_plain(resp, 404, _NO_HANDLER.format(path=req.path))
            return
        if req.method not in ("GET", "POST", "HEAD"):
            err = clickhouse_error(
                UNSUPPORTED_METHOD, f"HTTP method {req.method} is not supported: use GET or POST"
            )
            err.http_status = 405
            raise err
        form_body = None
        if request_mod.is_form(req):
            raw = req.body.read_all(request_mod.MAX_FORM_BODY)
            decoder = decoder_for(req.header("Content-Encoding"))
            form_body = decoder.decode(raw)
            decoder.finish()
        qr = request_mod.parse(req, form_body)
        if self.credentials is not None:
            self.credentials.check(qr.user, qr.password)
        if req.method in ("GET", "HEAD") and not qr.query_prefix:
            self._send_plain(resp, 200, "Ok.\n", head_only=req.method == "HEAD")
            return
        execute(self.ctx, req, qr, resp)

    def _send_plain(self, resp: Response, status: int, text: str, head_only: bool = False) -> None:
        resp.status = status
        resp.set_header("Content-Type", "text/plain; charset=UTF-8")
        body = text.encode()
        resp.send_whole(b"" if head_only else body)

    def _send_error(self, resp: Response, err: ServerError) -> None:
        resp.status = err.http_status or 500
        resp.set_header("Content-Type", "text/plain; charset=UTF-8")
        resp.set_header("X-ClickHouse-Exception-Code", str(err.code or 0))
        resp.headers = [(k, v) for k, v in resp.headers if k.lower() != "content-encoding"]
        with contextlib.suppress(ClientGone):
            resp.send_whole(response_body(err, self.ctx.engine.version))
