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
* the logger of its private module ``_backend.http_sync``, filtered as said above.

``timeout`` and ``http_retries`` are the client's public properties; the rest of
chworkers uses the client's public methods only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.httputil import get_pool_manager_options
from urllib3 import BaseHTTPResponse, PoolManager, Timeout

from chworkers.clickhouse.dsn import ConnectionConfig, Host


class _DriverDuplicates(logging.Filter):
    """clickhouse-connect warns "Unexpected Http Driver Exception" (no reason given) just
    before it raises the error that :func:`translate_error` turns into ours, which the
    pool and the host selector log with its reason: one line per failed request, twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Unexpected Http Driver Exception"


logging.getLogger("clickhouse_connect.driver._backend.http_sync").addFilter(_DriverDuplicates())


class _NoRetries(PoolManager):
    """A pool manager on which urllib3 never retries: clickhouse-connect asks it for one
    retry per request (``http_retries``, 1 for the requests its constructor sends, before
    the property can be set), and a connect failure was then tried twice, each time with
    the whole ``connect_timeout``, behind the retry policy's back. ``retries=False`` also
    hands a redirect back as it is, and raises urllib3's error itself (no MaxRetryError
    around it), which :func:`translate_error` reads alike."""

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
