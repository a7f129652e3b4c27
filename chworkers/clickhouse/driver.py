"""clickhouse-connect as a :class:`~chworkers.clickhouse.connection.Connection` uses it.

One client per connection, on an HTTP pool of its own (one socket, so a connection is one
TCP connection the pool can count), with the exact timeouts (clickhouse-connect rounds
them down to whole seconds), no retries of its own nor urllib3's (the retry policy is
the one retry layer: the driver would repeat an insert on a reset connection, token or
not, and urllib3 retried a failed connect once, which doubled the wait for a host that
does not answer and logged a "Retrying (Retry(total=0, ...))" warning each time), and the
HTTP status of an error response kept on the exception for
:func:`~chworkers.clickhouse.translate.translate_error`. Its "Unexpected Http Driver
Exception" warning, which says less than the error chworkers logs right after, is filtered.

This module is the one place that goes past clickhouse-connect's public API (checked by
tests/faults/test_fault_private_fields.py), each time because no public way exists:

* ``client._backend.request``: an insert is sent with ``retryable=True`` whatever the
  client's settings, and a remotely closed connection is then retried once even with
  ``http_retries = 0`` and ``query_retries = 0``: the wrapper passes ``retryable=False``;
* ``client._backend.error_handler``: the error it raises does not keep the response's HTTP
  status (it is in the message only when ``show_clickhouse_errors`` is on, and never
  with a ClickHouse code): the wrapper keeps it on the exception;
* the logger of its private module ``_backend.http_sync``, filtered as said above;
* :class:`RawInsert`: a raw insert (the daemon's batches, ``insert_raw``) sent straight
  over the client's pool, with what clickhouse-connect's ``raw_insert`` would send (its
  headers, its parameters, its settings as its ``_validate_settings`` makes them) and its
  errors raised by its own ``error_handler``, but without its per-request machinery: that
  cost a worker ~1.5 ms of CPU per request against ~0.6 for ``http.client`` (the body
  copied behind the statement, the pool manager's URL parsing and key, the retry
  wrappers). A client it does not recognise sends through ``raw_insert`` as before. A
  body that is a whole file's view (:class:`SendableFile`: a worker's memory file) goes
  with ``socket.sendfile`` over plain HTTP (:class:`_FileSending`, the pool's connection
  class).

``timeout`` and ``http_retries`` are the client's public properties; the rest of
chworkers uses the client's public methods only.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlencode

import clickhouse_connect
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.httputil import check_conn_expiration, get_pool_manager_options
from clickhouse_connect.driver.summary import QuerySummary
from urllib3 import BaseHTTPResponse, HTTPConnectionPool, PoolManager, Timeout
from urllib3.connection import HTTPConnection
from urllib3.exceptions import ProtocolError
from urllib3.util import parse_url

from chworkers.clickhouse.dsn import ConnectionConfig, Host


class _DriverDuplicates(logging.Filter):
    """clickhouse-connect warns "Unexpected Http Driver Exception" (no reason given) just
    before it raises the error that :func:`translate_error` turns into ours, which the
    pool and the host selector log with its reason: one line per failed request, twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Unexpected Http Driver Exception"


logging.getLogger("clickhouse_connect.driver._backend.http_sync").addFilter(_DriverDuplicates())

logger = logging.getLogger(__name__)


class SendableFile(Protocol):
    """A body that is also a file (a worker's
    :class:`~chworkers.workers.sharedbuf.SharedView`): :class:`RawInsert` sends it with
    ``socket.sendfile``, which passes the file's pages to the kernel without mapping or
    copying them in this process (58 MB: ~8 ms of the worker's CPU against ~13-17 for
    ``sendall`` of the mapped bytes), marking it around the send (see its docs)."""

    def fileno(self) -> int: ...

    def __len__(self) -> int: ...

    def sending(self) -> bool: ...

    def sent(self, whole: bool) -> None: ...


def sendable_file(body: object) -> SendableFile | None:
    """The file ``body`` is the whole of, when it is a view of one (else None)."""
    if not isinstance(body, memoryview):
        return None
    owner: Any = body.obj
    if not all(hasattr(owner, name) for name in ("fileno", "sending", "sent")):
        return None
    if not body.contiguous or body.nbytes != len(owner):
        return None  # a part of it (a split batch's half): sent as bytes
    file: SendableFile = owner
    return file


class _FileBody:
    """What :class:`RawInsert` hands urllib3 for a body sent from its file: one "chunk"
    (with its own ``Content-Length`` header) that :class:`_FileSending` recognises."""

    __slots__ = ("file", "size")

    def __init__(self, file: SendableFile, size: int) -> None:
        self.file, self.size = file, size

    def __iter__(self) -> Any:
        return iter((self,))


class _FileSending(HTTPConnection):
    """urllib3's plain HTTP connection, sending a :class:`_FileBody` with
    ``socket.sendfile`` (under the socket's timeout, as ``sendall``)."""

    def send(self, data: Any) -> None:
        if not isinstance(data, _FileBody):
            return super().send(data)
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendfile(data.file, 0, data.size)  # type: ignore[arg-type]  # has fileno()
        return None


class _FileSendingPool(HTTPConnectionPool):
    ConnectionCls = _FileSending


class _NoRetries(PoolManager):
    """A pool manager on which urllib3 never retries: clickhouse-connect asks it for one
    retry per request (``http_retries``, 1 for the requests its constructor sends, before
    the property can be set), and a connect failure was then tried twice, each time with
    the whole ``connect_timeout``, behind the retry policy's back. ``retries=False`` also
    hands a redirect back as it is, and raises urllib3's error itself (no MaxRetryError
    around it), which :func:`translate_error` reads alike."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.pool_classes_by_scheme = {**self.pool_classes_by_scheme, "http": _FileSendingPool}

    def urlopen(  # type: ignore[override]  # PoolManager's own signature, as it declares it
        self, method: str, url: str, redirect: bool = True, **kw: Any
    ) -> BaseHTTPResponse:
        kw["retries"] = False
        return super().urlopen(method, url, redirect, **kw)


def open_client(host: Host, cfg: ConnectionConfig) -> tuple[Client, PoolManager]:
    """A client of ``host`` on a pool manager of its own; the driver's errors as raised
    (the caller translates them)."""
    options = get_pool_manager_options(verify=cfg.verify, maxsize=1, num_pools=1)
    http = _NoRetries(**options)
    try:
        client: Any = clickhouse_connect.get_client(
            host=host.host,
            port=host.port,
            username=cfg.username,
            password=cfg.password,
            database=cfg.database,
            secure=cfg.secure,
            verify=cfg.verify,
            compress=cfg.compress,
            settings=dict(cfg.settings),
            client_name=cfg.client_name,
            connect_timeout=max(1, int(cfg.connect_timeout)),
            send_receive_timeout=max(1, int(cfg.send_receive_timeout)),
            query_retries=0,
            pool_mgr=http,
            autogenerate_session_id=False,
        )
    except BaseException:
        http.clear()
        raise
    # clickhouse-connect truncates timeouts to whole seconds; restore the exact values,
    # and leave retrying to chworkers' policy.
    client.timeout = Timeout(connect=cfg.connect_timeout, read=cfg.send_receive_timeout)
    client.http_retries = 0
    backend = getattr(client, "_backend", None)
    if backend is not None and hasattr(backend, "error_handler"):
        backend.error_handler = _keep_status(backend.error_handler)
    if backend is not None and hasattr(backend, "request"):
        # clickhouse-connect silently repeats any insert once on a reset connection, with
        # or without a deduplication token; one retry layer (the policy's) decides instead.
        backend.request = _no_driver_retry(backend.request)
    return client, http


def _keep_status(handler: Callable[..., None]) -> Callable[..., None]:
    """Wrap clickhouse-connect's HTTP error handler to remember the response's status."""

    @functools.wraps(handler)
    def error_handler(response: Any, *args: Any, **kwargs: Any) -> None:
        try:
            handler(response, *args, **kwargs)
        except Exception as exc:
            exc._chworkers_http_status = getattr(response, "status", None)  # type: ignore[attr-defined]
            raise

    return error_handler


def _no_driver_retry(request: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(request)
    def no_retry(*args: Any, **kwargs: Any) -> Any:
        kwargs["retryable"] = False
        return request(*args, **kwargs)

    return no_retry


#: The response header of a ClickHouse error (also sent with a 200 when the query failed
#: after the headers went out).
EXCEPTION_HEADER = "X-ClickHouse-Exception-Code"
#: An exception a server wrote into the body of a 200 (its progress headers had sent the
#: status already): since 25.11 inside an ``__exception__`` marker block, before that
#: the bare ``Code: NNN. DB::Exception: ...``. A successful INSERT's body is empty.
_EXCEPTION_IN_BODY = re.compile(rb"__exception__|Code: \d+\. DB::Exception:")
#: Statuses clickhouse-connect calls retryable: its error then says it was retried.
_RETRYABLE_STATUSES = (429, 503, 504)


class RawInsert:
    """Raw inserts of one client, sent as its ``raw_insert`` sends them (the statement in
    the ``query`` parameter, the body as it is), on the same pool, with the same headers
    and parameters (read at every request: the client changes them in place), settings
    and errors, but with one request and no retry wrapper in between. Make it with
    :meth:`of`, which says None for a client it does not know how to follow."""

    def __init__(self, client: Client, backend: object, http: PoolManager) -> None:
        self._client: Any = client  # its timeout, set by open_client
        private: Any = backend  # the client's private HTTP backend (see of())
        self._backend = private
        self._http = http
        url = parse_url(private._base_url)
        self._scheme, self._host, self._port = url.scheme or "http", url.host, url.port
        self._path = url.path or "/"
        self._pool: HTTPConnectionPool | None = None
        self._static: tuple[tuple[tuple[str, object], ...], str] = ((), "")

    @classmethod
    def of(cls, client: Client, http: PoolManager) -> RawInsert | None:
        """The sender of ``client`` (on ``http``, its pool manager), or None when the
        client is not the HTTP one this class follows, or needs what it does not do: a
        session (one request at a time, checked by the client), an access token that
        is refreshed on an authentication error."""
        backend = getattr(client, "_backend", None)
        needed = ("_base_url", "headers", "params", "error_handler", "http")
        if backend is None or not all(hasattr(backend, name) for name in needed):
            return None
        if backend.http is not http or getattr(backend, "token_provider", None) is not None:
            return None
        if not hasattr(client, "_validate_settings") or "session_id" in backend.params:
            return None
        return cls(client, backend, http)

    def send(
        self,
        table: str,
        column_names: Sequence[str] | None,
        body: bytes | bytearray | memoryview,
        *,
        fmt: str,
        settings: Mapping[str, object],
        compression: str | None,
    ) -> QuerySummary:
        """Send ``body`` (in ``fmt``, compressed by ``compression`` if given) into
        ``table``; raises clickhouse-connect's errors and urllib3's, as ``raw_insert``."""
        backend = self._backend
        cols = f" ({', '.join(quote_identifier(c) for c in column_names)})" if column_names else ""
        params: dict[str, object] = {"query": f"INSERT INTO {table}{cols} FORMAT {fmt}"}
        if self._client.database:
            params["database"] = self._client.database
        params.update(self._client._validate_settings(dict(settings)))
        if getattr(backend, "autogenerate_query_id", False) and "query_id" not in params:
            params["query_id"] = str(uuid.uuid4())
        headers = {**backend.headers, "Content-Type": "application/octet-stream"}
        if compression:
            headers["Content-Encoding"] = compression
        kwargs: dict[str, Any] = {}
        if getattr(backend, "server_host_name", None):
            kwargs["assert_same_host"] = False
            headers["Host"] = backend.server_host_name
        target = f"{self._path}?{self._fixed_params(params)}{urlencode(params)}"
        check_conn_expiration(self._http)  # as the client does before every request
        payload: Any = body  # any buffer: urllib3 hands it to sendall as it is
        pool = self._current_pool()
        file = sendable_file(body) if isinstance(pool, _FileSendingPool) else None
        if file is not None and file.sending():
            payload = _FileBody(file, len(file))
            headers["Content-Length"] = str(len(file))
        else:
            file = None
        try:
            response = pool.urlopen(
                "POST",
                target,
                body=payload,
                headers=headers,
                retries=False,
                timeout=self._client.timeout,
                preload_content=True,
                **kwargs,
            )
            summary = self._answer(response, table, fmt, body)
        except BaseException:
            if file is not None:
                file.sent(False)
            raise
        if file is not None:  # a confirmed insert: the server has read every byte
            file.sent(True)
        return summary

    def _answer(
        self,
        response: BaseHTTPResponse,
        table: str,
        fmt: str,
        body: bytes | bytearray | memoryview,
    ) -> QuerySummary:
        """The summary of a confirmed insert; raises what ``raw_insert`` would for any
        other answer."""
        backend = self._backend
        status = response.status
        if 200 <= status < 300 and not response.headers.get(EXCEPTION_HEADER):
            if all(name.lower() == "x-clickhouse-progress" for name in response.headers):
                # Only progress headers, then the end: the server went away before its
                # answer (http.client takes the end for the end of the headers).
                response.close()
                response.release_conn()
                raise ProtocolError("Connection closed before the HTTP response headers completed")
            if response.data and _EXCEPTION_IN_BODY.search(response.data):
                # Failed after a 200 went out: the error handler reads the code from the
                # body's message; never a confirmed insert.
                backend.error_handler(response, False)
            reported = response.headers.get("X-ClickHouse-Summary")
            summary: dict[str, Any] = {}
            if reported:
                try:
                    summary = json.loads(reported)
                except ValueError:
                    summary = {}
            summary["query_id"] = response.headers.get("X-ClickHouse-Query-Id", "")
            if logger.isEnabledFor(logging.DEBUG):  # as clickhouse-connect logs its requests
                logger.debug(
                    "INSERT INTO %s FORMAT %s: %d bytes sent, %s rows written, query_id %s",
                    table,
                    fmt,
                    len(memoryview(body).cast("B")),
                    summary.get("written_rows", "?"),
                    summary["query_id"] or "-",
                )
            return QuerySummary(summary)
        backend.error_handler(response, status in _RETRYABLE_STATUSES)
        raise AssertionError("clickhouse-connect's error handler returned")  # pragma: no cover

    def _fixed_params(self, extra: Mapping[str, object]) -> str:
        """The client's own parameters (its settings, the progress headers it asks
        for), URL-encoded with a trailing ``&``; encoded again only when they changed.
        Those of ``extra`` win (left out here)."""
        backend = self._backend
        fixed: dict[str, object] = {}
        if getattr(backend, "send_progress", None):
            fixed["send_progress_in_http_headers"] = "1"
        interval = getattr(backend, "progress_interval", None)
        if interval:
            fixed["http_headers_progress_interval_ms"] = interval
        fixed.update(backend.params)
        items = tuple((k, v) for k, v in fixed.items() if k not in extra)
        if items != self._static[0]:
            self._static = items, (urlencode(items) + "&") if items else ""
        return self._static[1]

    def _current_pool(self) -> HTTPConnectionPool:
        pool = self._pool
        if pool is None or pool.pool is None:  # none yet, or closed by a clear()
            pool = self._pool = self._http.connection_from_host(
                self._host, self._port, self._scheme
            )
        return pool
