"""Batches of rows encoded to ClickHouse Native format by the producer.

Serializing rows is most of what inserting costs the client (clickhouse-connect spends
~60% of a plain insert loop's time on it; see ``benchmarks/bench_supervisor.py``). The
supervisor does it in the producer's thread, with clickhouse-connect's own serializer,
so the worker only sends bytes: the batch crosses the process boundary once, already in
its final form, and producer and worker work in parallel.

Native needs the column types. A worker looks them up once per table and column list
(``create_insert_context``, as clickhouse-connect does for its own inserts) and the
supervisor caches them; a ClickHouse error on a Native insert drops the cache entry, so
a changed table is looked up again. A batch the serializer rejects (a string in a number
column, say) falls back to the pickled rows, so the worker reports the same error a
plain insert would.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.insert import InsertContext
from clickhouse_connect.driver.transform import NativeTransform

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


def encode(schema: TableSchema, data: Any, column_oriented: bool) -> bytes | None:
    """``data`` as a Native block, or None when the serializer rejects it."""
    ctx = InsertContext(
        schema.table,
        list(schema.column_names),
        [get_from_name(name) for name in schema.type_names],
        data,
        column_oriented=column_oriented,
        server_tz=schema.server_tz,
    )
    try:
        body = b"".join(NativeTransform.build_insert(ctx))
    except Exception as exc:
        log.debug("Native encoding of a batch for %s failed: %s", schema.table, exc)
        return None
    if ctx.insert_exception is not None:
        return None
    cols = ", ".join(quote_identifier(name) for name in schema.column_names)
    prefix = f"INSERT INTO {schema.table} ({cols}) FORMAT Native\n".encode()
    if not body.startswith(prefix):  # not the layout this module was written against
        return None
    return body[len(prefix) :]


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
