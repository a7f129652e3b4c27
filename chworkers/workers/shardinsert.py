"""Inserts routed by a sharding key: one batch split into one part per shard.

:class:`ShardedInserts` (the supervisor's, for ``insert(..., sharding_key=...)``) binds the
key to the table's column types (looked up once through a worker), evaluates it over the
batch's key columns, routes every row with the cluster's
:class:`~chworkers.clickhouse.sharding.ShardRouter` (exactly the shard a ``Distributed``
table would pick), cuts the batch into one part per shard in the form it came in (rows,
columns, DataFrame, Arrow), and queues each part as an insert task of its own on its
shard, with the token :func:`~chworkers.clickhouse.dedup.shard_token` derives from the
batch's (when the caller gives one; else each part's content token, as any insert's: the
same batch splits into the same parts, so either way a batch sent again inserts nothing
twice). Each shard confirms its part independently; the :class:`ShardedFuture` resolves
to the rows written once every part is done, or to a
:class:`~chworkers.errors.ShardInsertError` naming the shards that failed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from chworkers.clickhouse import dedup
from chworkers.clickhouse.cluster import Cluster
from chworkers.clickhouse.native import TableSchema
from chworkers.clickhouse.sharding import BoundShardingKey, Indexes, ShardingKey, ShardRouter
from chworkers.errors import BatchError, ConfigError, ShardInsertError
from chworkers.wording import plural

__all__ = ["ShardedFuture", "ShardedInserts", "cut", "key_columns"]

#: ``insert(table, part, names, settings, token, timeout, shard) -> Future[int]``.
InsertPart = Callable[
    [str, Any, "Sequence[str] | None", "Mapping[str, object] | None", "str | None", Any, int],
    "Future[int]",
]
#: ``lookup(table, shard) -> TableSchema`` (raises when the lookup fails).
SchemaLookup = Callable[[str, int], TableSchema]


class ShardedFuture(Future[int]):
    """The future of an insert split by shard: the rows written by all shards.

    ``parts`` maps each shard that got rows to its part's own future (rows written by
    that shard), so a caller can see which shards have confirmed.
    """

    def __init__(self, table: str) -> None:
        super().__init__()
        self.table = table
        self.parts: dict[int, Future[int]] = {}
        self._lock = threading.Lock()
        self._left = 0

    def _track(self, parts: dict[int, Future[int]]) -> None:
        self.parts = parts
        self._left = len(parts)
        if not parts:
            self.set_result(0)
            return
        self.set_running_or_notify_cancel()
        for future in parts.values():
            future.add_done_callback(self._part_done)

    def _part_done(self, _: Future[int]) -> None:
        with self._lock:
            self._left -= 1
            if self._left:
                return
        failed = {
            shard: f.exception()
            for shard, f in self.parts.items()
            if f.cancelled() or f.exception()
        }
        written = sum(f.result() for s, f in self.parts.items() if s not in failed)
        if not failed:
            self.set_result(written)
            return
        reasons = {
            s: "cancelled" if e is None else f"{type(e).__name__}: {e}" for s, e in failed.items()
        }
        confirmed = sorted(set(self.parts) - set(failed))
        error = ShardInsertError(
            f"insert into {self.table!r}: shard{'s' if len(failed) > 1 else ''} "
            f"{', '.join(map(str, sorted(failed)))} failed"
            + (
                f" (shard{'s' if len(confirmed) > 1 else ''} {', '.join(map(str, confirmed))} "
                f"confirmed {plural(written, 'row')})"
                if confirmed
                else ""
            )
            + ": "
            + "; ".join(f"shard {s}: {r}" for s, r in sorted(reasons.items())),
            table=self.table,
            failed=sorted(failed),
            written=written,
            errors=[reasons[s] for s in sorted(failed)],
        )
        first = failed[min(failed)]
        if first is not None:
            error.__cause__ = first
        self.set_exception(error)


class ShardedInserts:
    """Splits batches by a sharding key over ``cluster`` and queues the parts."""

    def __init__(self, cluster: Cluster, insert: InsertPart, lookup: SchemaLookup) -> None:
        self.cluster = cluster
        self.router = ShardRouter(cluster)
        self._insert = insert
        self._lookup = lookup
        self._keys: dict[str, ShardingKey] = {}
        self._bound: dict[tuple[str, str], tuple[BoundShardingKey, TableSchema]] = {}
        self._lock = threading.Lock()

    def insert(
        self,
        table: str,
        data: object,
        column_names: Sequence[str] | None,
        settings: Mapping[str, object] | None,
        token: str | None,
        timeout: Any,
        sharding_key: str | ShardingKey,
    ) -> ShardedFuture:
        key = self._parse(sharding_key)
        batch = dedup.normalize(data, column_names, table=table)
        future = ShardedFuture(table)
        if batch.rows == 0:
            future._track({})
            return future
        if key.is_random:  # the whole batch to one shard, the same one for the same batch
            token = token if token is not None else dedup.derive_token(None, table, batch)
            shard = self.router.token_shard(token)
            part = self._insert(
                table,
                batch.data,
                batch.column_names,
                settings,
                dedup.shard_token(token, shard),
                timeout,
                shard,
            )
            future._track({shard: part})
            return future
        bound, schema = self._bind(table, key)
        names = list(batch.column_names or schema.column_names)
        values = key_columns(batch.kind, batch.data, names, bound.fields, table)
        positions = self.router.split(bound.evaluate(values))
        parts: dict[int, Future[int]] = {}
        try:
            for shard, rows in enumerate(positions):
                if len(rows):
                    parts[shard] = self._insert(
                        table,
                        cut(batch.kind, batch.data, batch.column_names, rows),
                        batch.column_names,
                        settings,
                        # No token given: each part's own content token, as any insert's.
                        None if token is None else dedup.shard_token(token, shard),
                        timeout,
                        shard,
                    )
        finally:  # parts queued before a failure (a full queue) still run: track them
            future._track(parts)
        return future

    def _parse(self, expression: str | ShardingKey) -> ShardingKey:
        if isinstance(expression, ShardingKey):
            return expression
        with self._lock:
            key = self._keys.get(expression)
        if key is None:
            key = ShardingKey.parse(expression)
            with self._lock:
                self._keys[expression] = key
        return key

    def _bind(self, table: str, key: ShardingKey) -> tuple[BoundShardingKey, TableSchema]:
        with self._lock:
            found = self._bound.get((table, key.expression))
        if found is not None:
            return found
        errors = []
        for shard in range(len(self.cluster)):  # the first shard that answers
            try:
                schema = self._lookup(table, shard)
                break
            except Exception as exc:
                errors.append(f"shard {shard}: {type(exc).__name__}: {exc}")
        else:
            raise ConfigError(
                f"insert into {table!r} by sharding key {key.expression!r}: the table's column "
                f"types (to evaluate the key as ClickHouse does) could not be looked up on any "
                f"shard: {'; '.join(errors)}",
                key="sharding_key",
                value=key.expression,
                expected="a table that exists on the shards",
            )
        bound = key.bind(dict(zip(schema.column_names, schema.type_names, strict=True)))
        with self._lock:
            self._bound[(table, key.expression)] = (bound, schema)
        return bound, schema


def key_columns(
    form: str, data: Any, names: Sequence[str], fields: Sequence[str], table: str
) -> list[list[object]]:
    """The values of each of ``fields`` in a normalized batch (rows, columns, pandas,
    arrow) whose columns are ``names``."""
    out: list[list[object]] = []
    for field in fields:
        if field not in names:
            raise BatchError(
                f"insert into {table!r}: the batch has no column {field!r}, which the "
                f"sharding key reads (its columns: {', '.join(names)})",
                table=table,
                reason="missing sharding key column",
            )
        at = list(names).index(field)
        if form == "rows":
            out.append([row[at] for row in data])
        elif form == "columns":
            column = data[at]
            out.append(column.tolist() if hasattr(column, "tolist") else list(column))
        elif form == "pandas":
            out.append(data.iloc[:, at].tolist())
        else:  # arrow
            out.append(data.column(at).to_pylist())
    return out


def cut(form: str, data: Any, names: Sequence[str] | None, rows: Indexes) -> Any:
    """The rows at positions ``rows`` (ascending) of a normalized batch, in its form
    (columns as a mapping of ``names``: a list of them would be read as rows)."""
    if form == "rows":
        return [data[i] for i in rows.tolist()]
    if form == "columns":
        picked = rows.tolist()
        columns = [
            column[rows]
            if isinstance(column, np.ndarray)
            else column.iloc[rows]  # a pandas Series: by position, not by label
            if hasattr(column, "iloc")
            else [column[i] for i in picked]
            for column in data
        ]
        return columns if names is None else dict(zip(names, columns, strict=True))
    if form == "pandas":
        return data.iloc[rows]
    return data.take(rows)  # arrow
