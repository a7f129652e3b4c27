"""The HTTP push source: ``POST /ingest/<table>``.

A request is answered ``202 Accepted`` only once its records are durably in the spool,
so an acknowledged row survives a crash of the daemon. A request is spooled whole or not
at all: ``202`` means all of it, any other answer means none of it, ever (records not
spooled within ``spool_timeout`` are withdrawn before the ``503``, so a client's retry
cannot land them twice). Bad input is answered with a 4xx and the reason (which line,
what is wrong); a spool that cannot take data (full, its disk full or failing, the daemon
stopping) is answered ``503`` with ``Retry-After``, so well-behaved clients back off.

A request with an ``Idempotency-Key`` header is a batch of its own whose deduplication
token is made from the key: sent again after a lost answer, it is dropped by ClickHouse.

Bodies may be JSONEachRow (one JSON object per line), CSV or TSV, chosen by the
``format`` query parameter or the Content-Type, and gzip-compressed
(``Content-Encoding: gzip``). The body size is limited before and after decompression.
What a body must be, and how it becomes records, is :mod:`chworkers.daemon.pushbody`.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from chworkers.daemon import pushbody
from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.batchfile import batch_overhead
from chworkers.daemon.options import HttpSettings
from chworkers.errors import BatcherClosedError, ConfigError, HttpRequestError, SpoolError
from chworkers.http.framing import http_error, plain_response
from chworkers.http.server import BoundedHandler, BoundedHTTPServer
from chworkers.http.watch import ByteBudget
from chworkers.wording import plural

log = logging.getLogger(__name__)

#: Seconds a client is asked to wait (``Retry-After``) when the spool cannot take data.
RETRY_AFTER = 5


@dataclasses.dataclass(frozen=True)
class Route:
    """Where ``POST /ingest/<table>`` sends its records."""

    table: str
    pipeline: str
    format: str = "JSONEachRow"
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    limits: BatchLimits | None = None
    transform: Callable[[bytes], bytes] | None = None


class IngestServer:
    """Serves the push endpoint in a background thread.

    ``http`` is the daemon's ``[http]`` (address, token, body and buffer limits, how long
    a request waits for the spool, connection limits; the defaults when not given).
    """

    def __init__(
        self,
        routes: Mapping[str, Route],
        batcher: Batcher,
        http: HttpSettings | None = None,
        *,
        validate_json: bool = True,
        on_error: Any = None,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.routes = dict(routes)
        self.batcher = batcher
        self.settings = http = http or HttpSettings()
        self.token = http.token
        self.max_body_bytes = http.max_body_bytes
        self.buffered = ByteBudget(http.max_buffered_bytes)
        self.spool_timeout = http.spool_timeout
        self.validate_json = validate_json
        self.on_error = on_error
        self.limits = http.limits
        self._answering = 0  # POSTs between their first byte read and their answer
        self._answered = threading.Condition()
        handler = type(
            "Handler", (_Handler,), {"ingest": self, "max_body_bytes": http.max_body_bytes}
        )
        busy = json.dumps({"error": "too many connections; retry later"}).encode() + b"\n"
        try:
            self._server = BoundedHTTPServer(
                (http.host, http.port),
                handler,
                self.limits,
                busy_response=plain_response(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    busy,
                    content_type="application/json",
                    headers={"Retry-After": str(self.limits.retry_after)},
                ),
                on_refusal=on_refusal,
            )
        except OSError as exc:  # the port is taken, the address is not this host's
            raise ConfigError(
                f"cannot listen for pushes on {http.host}:{http.port}: {exc.strerror or exc} "
                "(set [http] host and port; 0 picks a free port)",
                key="http.port",
                value=http.port,
                expected="a free port on http.host",
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="chworkers-ingest",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return self._server.active

    def start(self) -> None:
        self._thread.start()
        log.info("ingest endpoint listening on %s/ingest/<table>", self.url)

    def stop(self) -> None:
        """Stop accepting requests (requests in progress finish)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def wait_answered(self, timeout: float) -> bool:
        """Until every request in progress has been answered (True), at most ``timeout``.

        For a stop: once the batcher has settled what it holds, each request waiting for
        it gets its answer (202 or 503) before the process exits; a 202 lost in an exit
        would make its client send the rows again."""
        with self._answered:
            return self._answered.wait_for(lambda: self._answering == 0, timeout)

    def _begin(self) -> None:
        with self._answered:
            self._answering += 1

    def _end(self) -> None:
        with self._answered:
            self._answering -= 1
            self._answered.notify_all()

    # -- request handling (called from the handler thread) ------------------------

    def handle(
        self,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        reserve: Callable[[int], None] = lambda size: None,
    ) -> dict[str, Any]:
        """Spool one request's records; ``reserve`` accounts for an inflated body."""
        parts = urlsplit(path)
        segments = [unquote(s) for s in parts.path.strip("/").split("/")]
        if len(segments) != 2 or segments[0] != "ingest":
            raise http_error(HTTPStatus.NOT_FOUND, "use POST /ingest/<table>")
        route = self.routes.get(segments[1])
        if route is None:
            known = ", ".join(sorted(self.routes)) or "none"
            raise http_error(
                HTTPStatus.NOT_FOUND,
                f"no pipeline ingests into table {segments[1]!r} (configured: {known})",
            )
        fmt = pushbody.body_format(
            route.format, parse_qs(parts.query), headers.get("content-type", "")
        )
        token = pushbody.idempotency_token(route.table, headers.get("idempotency-key"))
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            body = pushbody.decode(body, encoding, self.max_body_bytes)
            reserve(len(body))
        records, rows, header = pushbody.frame(
            body, fmt, max_record_bytes=self.max_body_bytes, validate_json=self.validate_json
        )
        if rows == 0:
            return {"rows": 0}
        pushbody.check_declared_format(header, records, fmt, route.format)
        if route.transform is not None and fmt == "JSONEachRow":
            records = route.transform(records)
        self._check_fits(route, len(header) + len(records), rows)  # as they are spooled
        # All or nothing: the request's records go into one batch together; if the spool
        # has not taken them within spool_timeout they are withdrawn, so a request
        # answered anything but 202 is never spooled later (its retry would double it).
        # The batch is cut up to max_delay after the request (grown while the table is
        # slowed down for too many parts): that wait is the batcher's, not the spool's,
        # and does not count against spool_timeout.
        limits = self.batcher.limits_for(route.table, route.limits)
        wait = self.spool_timeout + (0.0 if token else limits.max_delay)
        try:
            ticket = self.batcher.add(
                route.table,
                records,
                rows,
                format=fmt,
                pipeline=route.pipeline,
                settings=route.settings,
                limits=route.limits,
                timeout=wait,
                header=header,
                token=token,
            )
            batch = ticket.settle(wait)
        except SpoolError as exc:
            raise http_error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the spool cannot take these records right now; nothing of them was kept: {exc}",
                headers={"Retry-After": str(RETRY_AFTER)},
            ) from exc
        except BatcherClosedError as exc:
            raise http_error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the daemon is stopping; nothing of the request was kept: {exc}",
                headers={"Retry-After": str(RETRY_AFTER), "Connection": "close"},
            ) from exc
        return {"rows": rows, "batch": batch}

    def _check_fits(self, route: Route, size: int, rows: int) -> None:
        """A 413 for records that no spool could ever take: more than its ``max_bytes``,
        or than its whole filesystem. A 503 would have its client send them forever."""
        size += batch_overhead(route.table, route.pipeline)
        limit, what = self.batcher.spool.capacity()
        if size > limit:
            self._server.refusal("too_large")
            raise http_error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"these {plural(rows, 'row')} take {size:,} bytes in the spool, more than "
                f"it can ever hold: {what} is {limit:,} bytes; send them in smaller "
                "requests (nothing of them was kept)",
            )


class _Handler(BoundedHandler):
    ingest: IngestServer
    server_version = "chworkers-ingest"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    _held = 0

    def do_POST(self) -> None:
        self.ingest._begin()
        try:
            self._post()
        finally:
            self.ingest._end()

    def _post(self) -> None:
        try:
            self._authorize()
            body = self._read_body()
            result = self.ingest.handle(
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                body,
                reserve=self.reserve_body,
            )
        except HttpRequestError as exc:
            if self.ingest.on_error is not None and exc.status < 500:
                self.ingest.on_error("http", str(exc))
            self._reply(exc.status, {"error": str(exc)}, exc.headers)
            return
        except Exception:
            log.exception("ingest request %s failed", self.path)
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; see the log"})
            return
        finally:
            self.ingest.buffered.release(self._held)
            self._held = 0
        self._reply(HTTPStatus.ACCEPTED, result)

    def reserve_body(self, size: int) -> None:
        budget = self.ingest.buffered
        if not budget.reserve(size):
            self.server.refusal("memory")
            raise http_error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the push endpoint holds {budget.held} bytes of request bodies, its limit "
                f"is {budget.limit} (http.max_buffered_bytes); retry later",
                headers={"Retry-After": str(self.ingest.limits.retry_after)},
            )
        self._held += size

    def do_GET(self) -> None:
        self._reply(
            HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use POST /ingest/<table>"}, {"Allow": "POST"}
        )

    def _authorize(self) -> None:
        token = self.ingest.token
        if token is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise http_error(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="chworkers"'},
            )

    def _read_body(self) -> bytes:
        length, chunked = self.framing
        if length is None and not chunked:
            raise http_error(HTTPStatus.LENGTH_REQUIRED, "Content-Length or chunked body needed")
        return self.read_body()

    def refuse(self, status: int, message: str, headers: Mapping[str, str]) -> None:
        self._reply(status, {"error": message}, headers)

    def _reply(
        self,
        status: int,
        payload: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode() + b"\n"
        self.reply(status, data, "application/json", headers)
