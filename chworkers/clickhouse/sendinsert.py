"""One insert over one connection, as :class:`~chworkers.clickhouse.connection.Connection`'s
``insert`` and ``raw_insert`` send it.

Rows and columns go as ClickHouse's Native format when the table's columns allow (one
encoding serves as the body and as what the deduplication token is derived from), else
through clickhouse-connect (pandas, pyarrow, numpy's datetime64 columns converted by the
column types); bytes already in a ClickHouse format go as they are, compressed by the
connection's codec when asked. Every insert carries an ``insert_deduplication_token``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from clickhouse_connect.driver.compression import get_compressor
from clickhouse_connect.driver.summary import QuerySummary

from chworkers.clickhouse import dedup, epochs, native, views
from chworkers.clickhouse.columnar import numpy_columns
from chworkers.clickhouse.dedup import Queries
from chworkers.clickhouse.driver import RawInsert
from chworkers.clickhouse.insertmode import insert_settings
from chworkers.clickhouse.translate import bad_value
from chworkers.errors import ServerError

__all__ = ["InsertTarget", "insert_bytes", "insert_data"]

#: Raw insert bodies from this size on are sent without a copy (see ``insert_bytes``).
_BODY_AS_IS = 1 << 20


class InsertTarget(Queries, Protocol):
    """What an insert needs of its connection
    (:class:`~chworkers.clickhouse.connection.Connection`, which calls these): what the
    deduplication and view checks need (:class:`~chworkers.clickhouse.dedup.Queries`),
    and these."""

    def knows_setting(self, name: str) -> bool: ...

    @property
    def raw_sender(self) -> RawInsert | None: ...

    def calling(self, what: str, *, idempotent: bool) -> AbstractContextManager[None]: ...


def insert_data(
    conn: InsertTarget,
    table: str,
    data: object,
    column_names: Sequence[str] | None,
    *,
    database: str | None,
    column_oriented: bool,
    settings: Mapping[str, object] | None,
    deduplication_token: str | None,
) -> QuerySummary:
    """``Connection.insert``: ``data`` in any shape it takes, with its token."""
    batch = dedup.normalize(data, column_names, column_oriented, table=table)
    opts = dict(settings or {})
    token = deduplication_token or opts.get("insert_deduplication_token")
    if database is None and batch.kind in ("rows", "columns"):
        # Native first: one encoding serves as the request body and as the content
        # the token is derived from (hashing bytes is ~100x cheaper than pickling rows).
        block = native.block(conn, table, batch.data, batch.column_names, batch.column_oriented)
        if block is not None:
            body, names = block
            if not token:
                token = dedup.content_token(
                    f"{conn.config.database or ''}\0{table}", f"Native\0{names}", (body,)
                )
            try:
                return insert_bytes(
                    conn,
                    table,
                    body,
                    fmt="Native",
                    column_names=names,
                    settings=opts,
                    deduplication_token=str(token),
                    compress=True,
                )
            except ServerError:
                native.forget(conn, table)  # the table may have changed under us
                raise
    if not token:
        token = dedup.derive_token(database or conn.config.database, table, batch)
    opts = insert_settings(
        {**conn.config.settings, **opts},
        token=str(token),
        known=conn.knows_setting,
        table=table,
    )
    what = f"INSERT INTO {table} ({batch.kind}, token {token})"
    with conn.calling(what, idempotent=True):
        client = conn.client
        dedup.check_window(conn, database, table)
        views.check(conn, database, table)
        args: dict[str, Any] = {"database": database, "settings": opts}
        summary: QuerySummary
        if batch.kind == "pandas":
            summary = client.insert_df(table, batch.data, column_names=batch.column_names, **args)
        elif batch.kind == "arrow":
            summary = client.insert_arrow(table, batch.data, **args)
        elif batch.column_oriented and any(map(_is_datetime64, batch.data)):
            # clickhouse-connect cannot write datetime64 arrays: convert them by the
            # column types (the query clickhouse-connect's insert would make anyway).
            ctx = client.create_insert_context(
                table, batch.column_names or "*", column_oriented=True, **args
            )
            columns, formats = numpy_columns(
                ctx.column_names, ctx.column_types, batch.data, table=table
            )
            ctx.column_formats.update(formats)
            ctx.data = columns
            summary = client.data_insert(ctx)
        else:
            ctx = client.create_insert_context(
                table,
                batch.column_names or "*",
                column_oriented=batch.column_oriented,
                data=batch.data,
                **args,
            )
            try:
                summary = client.data_insert(ctx)
            except Exception as exc:
                error = bad_value(table, ctx, exc, endpoint=conn.endpoint)
                if error is None:
                    raise
                raise error from exc
    return summary


def insert_bytes(
    conn: InsertTarget,
    table: str,
    data: bytes | memoryview,
    *,
    fmt: str,
    column_names: Sequence[str] | None,
    settings: Mapping[str, object] | None,
    deduplication_token: str,
    compress: bool,
    timestamps_checked: epochs.TimestampColumns | None = None,
) -> QuerySummary:
    """``Connection.raw_insert``: bytes in format ``fmt``, sent as they are."""
    # The connection's own settings count as the caller's (async_insert=1 in the DSN
    # makes its inserts asynchronous, not overridden by the synchronous default).
    opts = insert_settings(
        {**conn.config.settings, **(settings or {})},
        token=deduplication_token,
        known=conn.knows_setting,
        table=table,
    )
    # A view (a worker's memory file) is scanned in place, copied only when rewritten;
    # not even scanned when the caller did that ahead for the same timestamp columns.
    if fmt == "JSONEachRow":
        data = epochs.prepare(conn, table, data, fmt, opts, timestamps_checked)
    size = memoryview(data).nbytes
    what = f"INSERT INTO {table} FORMAT {fmt} ({size} bytes, token {deduplication_token})"
    block: bytes | bytearray | memoryview = data
    with conn.calling(what, idempotent=True):
        client = conn.client
        sender = conn.raw_sender
        dedup.check_window(conn, None, table)
        views.check(conn, None, table)
        codec = getattr(client, "write_compression", None) if compress else None
        if codec in ("lz4", "zstd"):
            block = get_compressor(codec).compress_block(block)
        else:
            codec = None
        try:
            summary: QuerySummary
            if sender is not None:  # the body as it is, the statement in the URL
                summary = sender.send(
                    table, column_names, block, fmt=fmt, settings=opts, compression=codec
                )
            else:
                # clickhouse-connect puts the statement in front of bytes (a copy of
                # the whole body); a large body goes as it is, the statement in the URL.
                if size >= _BODY_AS_IS and not codec:
                    block = memoryview(block)
                summary = client.raw_insert(
                    table,
                    column_names=column_names,
                    insert_block=block,
                    settings=opts,
                    fmt=fmt,
                    compression=codec,
                )
        except Exception:
            epochs.forget(conn, table)  # the table may have changed under us
            raise
    return summary


def _is_datetime64(column: Any) -> bool:
    return getattr(getattr(column, "dtype", None), "kind", None) == "M"
