"""One ClickHouse connection: a clickhouse-connect client to one host, used by one thread.

:class:`ConnectionConfig` says where and how to connect (a URL, a mapping or the value
itself; several hosts for replicas). :class:`Connection` wraps one clickhouse-connect HTTP
client with a private urllib3 pool of size 1, opened in the process that uses it: a
connection carried across ``fork`` reopens its client instead of sharing the parent's
socket. Every clickhouse-connect, urllib3 or socket exception raised inside a
:class:`Connection` method is translated once, by
:func:`~chworkers.clickhouse.translate.translate_error`, into :mod:`chworkers.errors`;
the original stays in ``__cause__``.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.query import QueryResult
from clickhouse_connect.driver.summary import QuerySummary
from urllib3 import PoolManager

from chworkers import timeouts
from chworkers.clickhouse import driver, sendinsert
from chworkers.clickhouse.dsn import ConnectionConfig, Host
from chworkers.clickhouse.epochs import TimestampColumns
from chworkers.clickhouse.translate import translate_error
from chworkers.errors import (
    ChworkersError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    ResponseTimeoutError,
    ServerError,
)

if TYPE_CHECKING:
    import pandas
    import pyarrow

__all__ = ["Connection", "ConnectionConfig", "Host", "translate_error"]

#: Query parameters: by name (``{name:Type}`` placeholders) or by position.
Parameters = Mapping[str, object] | Sequence[object] | None

log = logging.getLogger(__name__)


_IDS = itertools.count(1)
_READ_ONLY_RE = re.compile(r"^\s*(SELECT|WITH|SHOW|DESC|DESCRIBE|EXISTS|EXPLAIN)\b", re.I)


class Connection:
    """One clickhouse-connect HTTP client to one host; use from one thread at a time.

    Raises only :mod:`chworkers.errors` types. ``broken`` is set after a transport error
    (the pool then discards the connection).
    """

    def __init__(
        self, config: ConnectionConfig | str | Mapping[str, object], host: Host | None = None
    ) -> None:
        self.config = ConnectionConfig.coerce(config)
        self.host = host if host is not None else self.config.hosts[0]
        scheme = "https" if self.config.secure else "http"
        self.endpoint = f"{scheme}://{self.host.host}:{self.host.port}"
        self.id = next(_IDS)
        self.created_at = time.monotonic()
        self.last_used_at = self.created_at
        self.broken = False
        self.closed = False
        self.last_error: ChworkersError | None = None
        self._owner: object | None = None  # the pool that lends this connection, and
        self._owner_pid = -1  # the process that pool lived in when it opened it
        self._retired = False  # set once by the pool when it closes this connection
        self._pid = -1
        self._client: Any = None  # clickhouse-connect's client, with its hooks replaced
        self._http: PoolManager | None = None
        self._raw: driver.RawInsert | None = None
        self._open()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "broken" if self.broken else "open"
        return f"<Connection #{self.id} {state} to {self.endpoint}>"

    @property
    def client(self) -> Client:
        """The underlying clickhouse-connect client (its exceptions are NOT translated)."""
        self._ensure_process()
        client: Client = self._client
        return client

    @property
    def raw_sender(self) -> driver.RawInsert | None:
        """What sends this connection's raw inserts without clickhouse-connect's
        per-request machinery (None: its ``raw_insert`` does); its exceptions are NOT
        translated (use it inside :meth:`calling`)."""
        self._ensure_process()
        return self._raw

    # -- the lending pool's bookkeeping (the pool asks; it never reaches into fields) --------

    @property
    def owner(self) -> object | None:
        """The pool that lends this connection (None: opened by hand)."""
        return self._owner

    def adopt(self, owner: object, pid: int) -> None:
        """``owner`` (a pool, living in process ``pid``) lends this connection from now."""
        self._owner, self._owner_pid = owner, pid

    def owned_by(self, owner: object, pid: int) -> bool:
        """Whether ``owner`` in process ``pid`` lends it (not its incarnation in the
        process it was forked from)."""
        return self._owner is owner and self._owner_pid == pid

    @property
    def opened_here(self) -> bool:
        """Whether its sockets were opened by this process (a forked child's copy is not:
        it must neither use nor close them)."""
        return self.opened_in(os.getpid())

    def opened_in(self, pid: int) -> bool:
        """Whether its sockets were opened by process ``pid``."""
        return self._pid == pid

    def retire(self) -> bool:
        """Mark it closed for good by its pool; False when it was already (closed by the
        pool's close(), then released by its user), so it is counted once."""
        if self._retired:
            return False
        self._retired = True
        return True

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.created_at

    def idle_for(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.last_used_at

    # -- operations -----------------------------------------------------------------------

    def query(
        self,
        sql: str,
        parameters: Parameters = None,
        settings: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> QueryResult:
        """Run a query; returns clickhouse-connect's ``QueryResult``. Reads are idempotent."""
        with self.calling(sql, idempotent=True):
            result: QueryResult = self._client.query(
                sql, parameters=parameters, settings=_dict(settings), **kwargs
            )
        return result

    def query_df(
        self, sql: str, parameters: Parameters = None, settings: Mapping[str, object] | None = None
    ) -> pandas.DataFrame:
        """Run a query and return a pandas DataFrame."""
        with self.calling(sql, idempotent=True):
            frame: pandas.DataFrame = self._client.query_df(
                sql, parameters=parameters, settings=_dict(settings)
            )
        return frame

    def query_arrow(
        self, sql: str, parameters: Parameters = None, settings: Mapping[str, object] | None = None
    ) -> pyarrow.Table:
        """Run a query and return a pyarrow Table."""
        with self.calling(sql, idempotent=True):
            table: pyarrow.Table = self._client.query_arrow(
                sql, parameters=parameters, settings=_dict(settings)
            )
        return table

    def command(
        self,
        sql: str,
        parameters: Parameters = None,
        settings: Mapping[str, object] | None = None,
        *,
        idempotent: bool | None = None,
    ) -> str | int | Sequence[str] | QuerySummary:
        """Run a statement (DDL, ``INSERT ... SELECT``, ``SELECT`` of one value).

        ``idempotent`` (default: whether the statement only reads) lets the retry policy
        repeat it after a "maybe applied" failure; pass ``True`` for statements such as
        ``CREATE TABLE IF NOT EXISTS``.
        """
        if idempotent is None:
            idempotent = bool(_READ_ONLY_RE.match(sql))
        with self.calling(sql, idempotent=idempotent):
            result: str | int | Sequence[str] | QuerySummary = self._client.command(
                sql, parameters=parameters, settings=_dict(settings)
            )
        return result

    def insert(
        self,
        table: str,
        data: object,
        column_names: Sequence[str] | None = None,
        *,
        database: str | None = None,
        column_oriented: bool = False,
        settings: Mapping[str, object] | None = None,
        deduplication_token: str | None = None,
    ) -> QuerySummary:
        """Insert a batch; returns clickhouse-connect's ``QuerySummary``.

        ``data`` is a sequence of rows (tuples or dicts), of columns (``column_oriented``),
        a mapping of column name to values, a numpy array (2-D or structured), a pandas
        DataFrame or a pyarrow Table. The insert always carries an
        ``insert_deduplication_token`` (``deduplication_token``, else one derived from the
        table and the batch's content), so repeating it after a lost response is harmless
        on tables that deduplicate (see :mod:`chworkers.clickhouse.dedup`).
        """
        return sendinsert.insert_data(
            self,
            table,
            data,
            column_names,
            database=database,
            column_oriented=column_oriented,
            settings=settings,
            deduplication_token=deduplication_token,
        )

    def raw_insert(
        self,
        table: str,
        data: bytes | memoryview,
        *,
        fmt: str,
        column_names: Sequence[str] | None = None,
        settings: Mapping[str, object] | None = None,
        deduplication_token: str,
        compress: bool = False,
        timestamps_checked: TimestampColumns | None = None,
    ) -> QuerySummary:
        """Insert bytes already in ClickHouse format ``fmt`` (JSONEachRow, CSV, Native...).

        This is how the daemon inserts spooled batches: the bytes are sent as they are, so
        a replay is byte-identical, and ``deduplication_token`` (required here) makes the
        replay harmless. With ``compress`` they travel compressed by the connection's
        codec (its ``compress`` option, lz4 or zstd), as ``insert`` sends rows.
        ``timestamps_checked``: the caller found no epoch number to rewrite in the bytes
        for these timestamp columns (:func:`chworkers.clickhouse.epochs.prepare`). Returns
        clickhouse-connect's ``QuerySummary``.
        """
        return sendinsert.insert_bytes(
            self,
            table,
            data,
            fmt=fmt,
            column_names=column_names,
            settings=settings,
            deduplication_token=deduplication_token,
            compress=compress,
            timestamps_checked=timestamps_checked,
        )

    def knows_setting(self, name: str) -> bool:
        """Whether setting ``name`` may be sent: the server has it and this user may change
        it (from the ``system.settings`` the client read when it connected; True when it
        could not tell). A setting a profile constraint fixes is ``readonly`` there, and
        clickhouse-connect refuses to send it ("Setting ... is readonly")."""
        self._ensure_process()
        known = getattr(self._client, "server_settings", None)
        if not known:
            return True
        found = known.get(name)
        return found is not None and not getattr(found, "readonly", 0)

    def ping(self, timeout: timeouts.Timeout = timeouts.DEFAULT) -> bool:
        """``True`` when the server answers within ``timeout`` seconds (by default the
        ``connect_timeout``; ``None``: no limit of its own, only the connection's
        ``send_receive_timeout``, as for a query). False marks the connection broken. A
        timeout that is not a number > 0 is a :class:`~chworkers.errors.ConfigError`."""
        seconds = timeouts.resolve(timeout, self.config.connect_timeout, name="ping timeout")
        if seconds is None:
            seconds = max(self.config.connect_timeout, self.config.send_receive_timeout)
        if seconds == 0:
            raise ConfigError(
                "ping timeout must be more than 0: a ping cannot be answered without waiting",
                key="ping timeout",
                value=timeout,
                expected="seconds > 0, or None for the connection's own timeouts",
            )
        try:
            self._ensure_process()
            ok = bool(self._client.ping(seconds))
        except Exception:
            ok = False
        if not ok:
            self.broken = True
        return ok

    def close(self) -> None:
        """Close the client and its sockets (only in the process that opened them)."""
        if self.closed:
            return
        self.closed = True
        http, self._http = self._http, None
        if http is not None and self._pid == os.getpid():
            try:
                http.clear()
            except Exception:  # closing must never raise into a pool's bookkeeping
                log.debug("error closing %r", self, exc_info=True)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _open(self) -> None:
        with self._translating("connect", idempotent=True):
            self._client, self._http = driver.open_client(self.host, self.config)
        self._raw = driver.RawInsert.of(self._client, self._http)
        self._pid = os.getpid()

    def _ensure_process(self) -> None:
        if self.closed:
            raise ConnectionLostError(f"{self!r} is closed", endpoint=self.endpoint, sent=False)
        if self._pid != os.getpid():
            # Opened in another process (we were forked): never share its sockets.
            self._http = self._raw = None
            self._open()

    @contextmanager
    def calling(self, what: str, *, idempotent: bool) -> Iterator[None]:
        """The context an operation ``what`` (its SQL, or a description) runs in: the
        client opened in this process, its errors translated, the last use stamped."""
        self._ensure_process()
        try:
            with self._translating(what, idempotent=idempotent):
                yield
        finally:
            self.last_used_at = time.monotonic()

    @contextmanager
    def _translating(self, sql: str, *, idempotent: bool) -> Iterator[None]:
        try:
            yield
        except ChworkersError:
            raise
        except Exception as exc:
            err = translate_error(exc, endpoint=self.endpoint, query=sql, idempotent=idempotent)
            self.last_error = err
            if isinstance(err, ConnectError | ConnectionLostError | ResponseTimeoutError):
                self.broken = True
            elif (
                isinstance(err, ServerError) and err.code is None and (err.http_status or 0) >= 502
            ):
                self.broken = True  # a gateway error: let the pool try another host
            raise err from exc


def _dict(settings: Mapping[str, object] | None) -> dict[str, Any] | None:
    return dict(settings) if settings else None
