"""The producer side of the supervisor: calls turned into queued tasks, in the caller's
thread.

:class:`Producer` encodes each task to bytes where it is submitted (rows to ClickHouse
Native, looking a table's columns up once through a worker; functions and arguments
with pickle or dill), numbers it, admits it to the outcomes' count and puts it on the
owner's bounded queue, blocking while that is full. What happens next is the loop's
(:class:`~chworkers.workers.arbiter.Arbiter`). :class:`~chworkers.workers.supervisor.Supervisor`
documents each call.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from functools import partial
from typing import Any

from chworkers import timeouts
from chworkers.clickhouse import native
from chworkers.clickhouse.epochs import TimestampColumns
from chworkers.clickhouse.insertmode import is_async
from chworkers.clickhouse.inserts import SplitBudget
from chworkers.clickhouse.partitions import one_block
from chworkers.clickhouse.schema import Evolve
from chworkers.clickhouse.shardpools import check_shard
from chworkers.errors import ConfigError, QueueFullError, SupervisorStoppedError
from chworkers.timeouts import Timeout
from chworkers.workers import tasks
from chworkers.workers.arbiter import Arbiter
from chworkers.workers.tasks import Task

log = logging.getLogger(__name__)


class Producer:
    def __init__(
        self,
        owner: Arbiter,
        *,
        clickhouse: bool,
        shards: int | None = None,
        arrow_compression: str | None = None,
    ) -> None:
        self.owner = owner
        self.clickhouse = clickhouse
        #: The codec of Arrow batches' buffers (the connection's ``compress``).
        self.arrow_compression = arrow_compression
        #: How many shards ClickHouse has (None: not sharded).
        self.shards = shards
        self._ids = itertools.count(1)

    def insert(
        self,
        table: str,
        rows: object,
        column_names: Sequence[str] | None,
        settings: Mapping[str, object] | None,
        deduplication_token: str | None,
        timeout: Timeout,
        shard: int | None = None,
    ) -> Future[Any]:
        self._require_clickhouse("insert")
        check_shard(shard, self.shards, f"insert into {table!r}", by_key=True)
        opts = self.owner.options
        future: Future[Any] = Future()
        encoder = partial(self._native, table, shard) if opts.native_encoding else None
        task = tasks.encode_insert(
            next(self._ids),
            future,
            table,
            rows,
            column_names,
            settings,
            deduplication_token,
            native=encoder,
            shard=shard,
            # Encoded here (Native, ArrowStream): sent compressed as the connection says
            # (its ``compress`` option, lz4 by default), as clickhouse-connect sends rows.
            compress=True,
            arrow_compression=self.arrow_compression,
        )
        self._put(task, timeouts.resolve(timeout, opts.queue_timeout))
        return future

    def lookup_schema(
        self, table: str, names: tuple[str, ...] | None, shard: int | None
    ) -> native.TableSchema:
        """``table``'s insert columns and types, looked up once through a worker (on
        ``shard``, of a sharded cluster: every shard's table is alike); raises what the
        lookup failed with, or a :class:`ConfigError` from a future's callback (the
        supervisor's loop, which cannot wait for a worker)."""
        owner = self.owner
        schema = owner.outcomes.schemas.get(table, names)
        if schema is not None:
            return schema
        whole = None if names is None else owner.outcomes.schemas.get(table, None)
        if whole is not None and names is not None and set(names) <= set(whole.column_names):
            # The table's columns are known already (a sharded insert looked them up on the
            # first shard that answered): no lookup on this insert's shard, which may be down.
            types = dict(zip(whole.column_names, whole.type_names, strict=True))
            schema = native.TableSchema(
                table, tuple(names), tuple(types[n] for n in names), whole.server_tz
            )
            owner.outcomes.schemas.put(table, names, schema)
            return schema
        if owner.in_loop():
            raise ConfigError(
                f"the columns of {table!r} are not known yet, and a future's callback cannot "
                "wait for a worker to look them up",
                key="table",
                value=table,
                expected="a first insert into the table from outside a callback",
            )
        future: Future[Any] = Future()
        lookup = tasks.encode_call(
            next(self._ids), future, tasks.SUBMIT, native.describe, (table, names), {}, shard=shard
        )
        lookup.internal = True
        self._put(lookup, owner.options.queue_timeout)
        found: native.TableSchema = future.result(owner.options.boot_timeout)
        owner.outcomes.schemas.put(table, names, found)
        return found

    def schema(
        self, table: str, names: tuple[str, ...] | None, shard: int | None
    ) -> native.TableSchema | None:
        """:meth:`lookup_schema`, or None when the schema cannot be had now."""
        try:
            return self.lookup_schema(table, names, shard)
        except Exception as exc:  # e.g. no such table: the insert itself will say so
            log.debug("no schema of %s: %s", table, exc)
            return None

    def _native(
        self, table: str, shard: int | None, form: str, names: tuple[str, ...] | None, data: Any
    ) -> tuple[bytes, Sequence[str]] | None:
        schema = self.schema(table, names, shard)
        if schema is None:
            return None
        # Named columns: normalize has checked every row's width against them.
        body = native.encode(schema, data, form == "columns", widths_checked=names is not None)
        return None if body is None else (body, schema.column_names)

    def insert_raw(
        self,
        table: str,
        data: bytes,
        fmt: str,
        rows: int | None,
        column_names: Sequence[str] | None,
        settings: Mapping[str, object] | None,
        deduplication_token: str | None,
        timeout: Timeout,
        split_bad_rows: bool,
        shard: int | None = None,
        evolve: Evolve | None = None,
        replay: bool = False,
        compress: bool = False,
        timestamps_checked: TimestampColumns | None = None,
    ) -> Future[Any]:
        self._require_clickhouse("insert_raw")
        check_shard(shard, self.shards, f"insert_raw into {table!r}")
        opts = self.owner.options
        future: Future[Any] = Future()
        budget = None
        if split_bad_rows:
            budget = SplitBudget(opts.split_max_requests, opts.split_max_seconds)
            # May be split by partition: sent as one block, so refused whole or not at
            # all (its length bounds its rows, and every sub-batch's). Not for an
            # asynchronous insert: the server writes a flush as one block anyway, and a
            # block size of the batch's own would keep it from sharing a flush with any
            # batch of another size (the server keys its queue by every setting).
            if not is_async(settings):
                settings = one_block(settings, data)
        task = tasks.encode_insert(
            next(self._ids),
            future,
            table,
            data,
            column_names,
            settings,
            deduplication_token,
            fmt=fmt,
            rows=rows,
            split=budget,
            shard=shard,
            evolve=evolve,
            replay=replay,
            compress=compress,
            timestamps_checked=timestamps_checked,
        )
        self._put(task, timeouts.resolve(timeout, opts.queue_timeout))
        return future

    def call(
        self,
        kind: str,
        fn: Callable[..., object],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        shard: int | None = None,
    ) -> Future[Any]:
        """A ``tasks.SUBMIT`` (``fn(conn, ...)`` with a leased connection, on ``shard``) or
        ``tasks.CALL``."""
        if kind == tasks.SUBMIT:
            self._require_clickhouse("submit")
            check_shard(shard, self.shards, "submit")
        future: Future[Any] = Future()
        task = tasks.encode_call(next(self._ids), future, kind, fn, args, kwargs, shard=shard)
        self._put(task, self.owner.options.queue_timeout)
        return future

    def _require_clickhouse(self, what: str) -> None:
        if not self.clickhouse:
            raise ConfigError(
                f"{what}() needs ClickHouse: give Supervisor(clickhouse=URL)",
                key="clickhouse",
                value=None,
                expected="a ClickHouse URL",
            )

    def _put(self, task: Task, timeout: float | None) -> None:
        owner = self.owner
        if owner.state != "running":
            raise SupervisorStoppedError(
                f"the supervisor is {owner.state}: start() it (or use it in a with block) first"
            )
        # A future's callback runs on the loop, which is what empties the queue: there a
        # full queue is answered at once, since waiting for room would wait for itself.
        in_loop = owner.in_loop()
        owner.outcomes.admit()
        try:
            owner.queue.put(task, 0.0 if in_loop else timeout)
        except QueueFullError as exc:
            owner.outcomes.withdraw()
            if not in_loop:
                raise
            raise QueueFullError(
                f"{exc}: a future's callback runs on the supervisor's loop, which empties "
                "the queue, so it cannot wait for room",
                size=getattr(exc, "size", None),
                nbytes=getattr(exc, "nbytes", None),
                timeout=0.0,
            ) from exc
        except BaseException:
            owner.outcomes.withdraw()
            raise
