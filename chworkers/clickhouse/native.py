"""Batches of rows encoded to ClickHouse Native format by the producer.

Serializing rows is most of what inserting costs the client (clickhouse-connect spends
~60% of a plain insert loop's time on it; see ``benchmarks/bench_supervisor.py``). The
supervisor does it in the producer's thread, column by column
(:mod:`chworkers.clickhouse.nativecols`: clickhouse-connect's bytes, about 3x faster than
its row-wise serializer), so the worker only sends bytes: the batch crosses the process boundary once, already in
its final form, and producer and worker work in parallel.

Native needs the column types. A worker looks them up once per table and column list
(``create_insert_context``, as clickhouse-connect does for its own inserts) and the
supervisor caches them; a ClickHouse error on a Native insert drops the cache entry, so
a changed table is looked up again. A batch the serializer rejects (a string in a number
column, say) falls back to the pickled rows, so the worker reports the same error a
plain insert would.

clickhouse-connect (and the encoders built on it) is imported on the first encoding, not
with this module: the daemon's process never encodes rows, and importing it there took
about a third of the daemon's start-up imports.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from chworkers.clickhouse.columnar import numpy_columns

if TYPE_CHECKING:
    from chworkers.clickhouse import nativecols

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableSchema:
    """What Native encoding needs to know about an insert's target columns."""

    table: str
    column_names: tuple[str, ...]
    type_names: tuple[str, ...]
    server_tz: tzinfo


def describe(conn: Any, table: str, column_names: Sequence[str] | None) -> TableSchema:
    """Run in a worker: the insert columns and types of ``table`` (one query)."""
    ctx = conn.client.create_insert_context(table, list(column_names) if column_names else "*")
    return TableSchema(
        table=table,
        column_names=tuple(ctx.column_names),
        type_names=tuple(t.name for t in ctx.column_types),
        server_tz=ctx.server_tz,
    )


def encode(
    schema: TableSchema, data: Any, column_oriented: bool, *, widths_checked: bool = False
) -> bytes | None:
    """``data`` as a Native block (:mod:`chworkers.clickhouse.nativecols`; a pandas
    DataFrame by clickhouse-connect's serializer, as ``insert_df`` encodes it; numpy
    ``datetime64`` columns by :func:`~chworkers.clickhouse.columnar.numpy_columns`), or
    None when it cannot be encoded (a value the serializer rejects, rows of the wrong width; with
    ``widths_checked`` the caller has checked every row against the schema's columns)."""
    from chworkers.clickhouse import nativecols

    try:
        encoders = _encoders(schema.column_names, schema.type_names)
        if _is_dataframe(data):
            return _dataframe(schema, encoders, data)
        if column_oriented:
            data, _ = numpy_columns(
                schema.column_names, [e.ctype for e in encoders], data, table=schema.table
            )
        return nativecols.encode_columns(
            schema.table,
            encoders,
            data,
            column_oriented,
            schema.server_tz,
            widths_checked=widths_checked,
        )
    except Exception as exc:
        log.debug("Native encoding of a batch for %s failed: %s", schema.table, exc)
        return None


def _is_dataframe(data: Any) -> bool:
    kind = type(data)
    return kind.__name__ == "DataFrame" and kind.__module__.split(".")[0] == "pandas"


def _dataframe(
    schema: TableSchema, encoders: Sequence[nativecols.ColumnEncoder], df: Any
) -> bytes | None:
    """A DataFrame by clickhouse-connect's own serializer: the bytes ``insert_df`` sends."""
    from clickhouse_connect.driver.binding import quote_identifier
    from clickhouse_connect.driver.insert import InsertContext
    from clickhouse_connect.driver.transform import NativeTransform

    if len(df.columns) != len(schema.column_names):
        return None
    ctx = InsertContext(
        schema.table,
        list(schema.column_names),
        [e.ctype for e in encoders],
        df,
        server_tz=schema.server_tz,
    )
    body = b"".join(NativeTransform.build_insert(ctx))
    if ctx.insert_exception is not None:
        return None
    cols = ", ".join(quote_identifier(name) for name in schema.column_names)
    prefix = f"INSERT INTO {schema.table} ({cols}) FORMAT Native\n".encode()
    if not body.startswith(prefix):  # not the layout this module was written against
        return None
    return body[len(prefix) :]


@functools.lru_cache(maxsize=256)
def _encoders(
    names: tuple[str, ...], type_names: tuple[str, ...]
) -> tuple[nativecols.ColumnEncoder, ...]:
    from chworkers.clickhouse import nativecols

    return tuple(map(nativecols.ColumnEncoder, names, type_names))


class SchemaCache:
    """Schemas by (table, column names); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._schemas: dict[tuple[str, tuple[str, ...] | None], TableSchema] = {}

    def get(self, table: str, names: tuple[str, ...] | None) -> TableSchema | None:
        with self._lock:
            return self._schemas.get((table, names))

    def put(self, table: str, names: tuple[str, ...] | None, schema: TableSchema) -> None:
        with self._lock:
            self._schemas[table, names] = schema

    def forget(self, table: str) -> None:
        with self._lock:
            for key in [k for k in self._schemas if k[0] == table]:
                del self._schemas[key]


#: Schemas a process looked up for :func:`block`, by server, database and table.
_CONNECTION_SCHEMAS = SchemaCache()


def _schema_key(conn: Any, table: str) -> str:
    return f"{conn.endpoint}\0{conn.config.database or ''}\0{table}"


def block(
    conn: Any, table: str, data: Any, names: Sequence[str] | None, column_oriented: bool
) -> tuple[bytes, tuple[str, ...]] | None:
    """``data`` (rows or columns) as a Native block for ``table`` on ``conn``'s server, with
    the column names it covers; None when it cannot be (the caller inserts it the usual
    way, which reports why). The columns are looked up once per process and table."""
    key, wanted = _schema_key(conn, table), tuple(names) if names is not None else None
    schema = _CONNECTION_SCHEMAS.get(key, wanted)
    if schema is None:
        try:
            schema = describe(conn, table, wanted)
        except Exception as exc:  # e.g. no such table: the usual insert says so
            log.debug("no Native encoding for %s: %s", table, exc)
            return None
        _CONNECTION_SCHEMAS.put(key, wanted, schema)
    # Named columns: normalize has checked every row's width against them.
    body = encode(schema, data, column_oriented, widths_checked=names is not None)
    return None if body is None else (body, schema.column_names)


def forget(conn: Any, table: str) -> None:
    """Look ``table``'s columns up again next time (an insert into it failed)."""
    _CONNECTION_SCHEMAS.forget(_schema_key(conn, table))
