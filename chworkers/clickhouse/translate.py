"""Where driver exceptions become chworkers errors: :func:`translate_error`.

Every clickhouse-connect, urllib3 or socket exception raised while talking to ClickHouse
is translated once, here, into :mod:`chworkers.errors` (httpcore's ``map_exceptions``):
a server's answer with a ClickHouse error code or an HTTP status becomes a
:class:`~chworkers.errors.ServerError`; a request never sent a
:class:`~chworkers.errors.ConnectError`; one sent but unanswered a
:class:`~chworkers.errors.ResponseTimeoutError` or
:class:`~chworkers.errors.ConnectionLostError`; anything the driver refused before
sending a :class:`~chworkers.errors.RequestError`. The original stays in ``__cause__``,
so the retry policy only ever sees chworkers' own types.
"""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Iterator
from typing import Any

from clickhouse_connect.driver import exceptions as ch_exc
from urllib3 import exceptions as u3_exc

from chworkers.clickhouse.retry import RETRYABLE_CODES
from chworkers.errors import (
    ChworkersError,
    ConnectError,
    ConnectionLostError,
    RequestError,
    ResponseTimeoutError,
    ServerError,
)

__all__ = ["bad_value", "translate_error"]

_CODE_RE = re.compile(r"\bCode:\s*(\d+)")
_TIMESTAMP = re.compile(r"^(?:Nullable\()?DateTime")
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]{2,})\)")
_STATUS_RE = re.compile(r"HTTP status (\d{3})")
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    u3_exc.NewConnectionError,
    u3_exc.ConnectTimeoutError,
    u3_exc.NameResolutionError,
    ConnectionRefusedError,
    socket.gaierror,
)
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (u3_exc.ReadTimeoutError, TimeoutError)
_LOST_ERRORS: tuple[type[BaseException], ...] = (
    u3_exc.ProtocolError,
    u3_exc.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    ch_exc.StreamFailureError,
    OSError,
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen or len(seen) > 16:
            continue
        seen.add(id(e))
        yield e
        reason = getattr(e, "reason", None)
        todo += [e.__cause__, e.__context__, reason if isinstance(reason, BaseException) else None]


def translate_error(
    exc: BaseException,
    *,
    endpoint: str | None = None,
    query: str | None = None,
    query_id: str | None = None,
    idempotent: bool = False,
) -> ChworkersError:
    """Map a driver, urllib3 or socket exception onto chworkers' error tree.

    The result carries ``endpoint``, ``query`` (its first 200 characters), ``query_id`` and
    ``idempotent`` (whether repeating the operation is harmless), which the retry policy
    reads. Its ``__cause__`` is ``exc``.
    """
    if isinstance(exc, ChworkersError):
        return exc
    ctx: dict[str, Any] = {
        "endpoint": endpoint,
        "query": query[:200] if query else query,
        "query_id": query_id,
        "idempotent": idempotent,
    }
    message = str(exc) or type(exc).__name__
    err: ChworkersError | None = None
    if isinstance(exc, ch_exc.Error) and not isinstance(exc, ch_exc.StreamFailureError):
        code = getattr(exc, "code", None)
        if code is None and (m := _CODE_RE.search(message)):
            code = int(m.group(1))
        status = getattr(exc, "_chworkers_http_status", None)
        if status is None and (m := _STATUS_RE.search(message)):
            status = int(m.group(1))
        if code is not None or status is not None:
            name = getattr(exc, "name", None)
            if name is None and (m := _NAME_RE.search(message)):
                name = m.group(1)
            if name is None and code is not None:
                name = RETRYABLE_CODES.get(code)
            err = ServerError(message, code=code, name=name, http_status=status, **ctx)
    if err is None:
        chain = list(_chain(exc))
        if any(isinstance(e, _CONNECT_ERRORS) for e in chain):
            err = ConnectError(f"cannot connect to {endpoint}: {_root(chain)}", **ctx)
        elif any(isinstance(e, _TIMEOUT_ERRORS) for e in chain):
            err = ResponseTimeoutError(
                f"no response from {endpoint} in time: {_root(chain)}", **ctx
            )
        elif any(isinstance(e, _LOST_ERRORS) for e in chain):
            err = ConnectionLostError(f"connection to {endpoint} lost: {_root(chain)}", **ctx)
        else:
            # Refused by the driver before sending (bad data or arguments): never applied.
            err = RequestError(f"{type(exc).__name__}: {message}", **ctx)
    err.__cause__ = exc
    return err


def _root(chain: list[BaseException]) -> str:
    last = chain[-1]
    return f"{type(last).__name__}: {last}"


def bad_value(table: str, ctx: Any, exc: BaseException, *, endpoint: str) -> RequestError | None:
    """A :class:`~chworkers.errors.RequestError` that names the column when
    clickhouse-connect could not write a batch's values (``ctx``: its insert context,
    which knows the column it was writing), else None: a server's or the network's error
    is :func:`translate_error`'s."""
    if isinstance(exc, ChworkersError | ch_exc.DatabaseError | ch_exc.OperationalError):
        return None
    if isinstance(exc, OSError | u3_exc.HTTPError | http.client.HTTPException):
        return None
    column = getattr(ctx, "column_name", None)
    if column is None:
        return None
    types = dict(zip(ctx.column_names, (t.name for t in ctx.column_types), strict=False))
    kind = types.get(column, "?")
    hint = ""
    if _TIMESTAMP.match(kind):
        hint = (
            "; it takes datetime values (or epoch seconds as int): send text as JSONEachRow "
            "with insert_raw and settings date_time_input_format = best_effort"
        )
    return RequestError(
        f"insert into {table}: column {column!r} ({kind}) cannot take these values: "
        f"{type(exc).__name__}: {exc}{hint}",
        endpoint=endpoint,
        query=f"INSERT INTO {table}",
        column=column,
        column_type=kind,
    )
