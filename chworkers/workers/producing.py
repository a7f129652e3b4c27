"""The Supervisor's producing methods: inserts, raw inserts, submitted functions.

:class:`Producing` is the half of :class:`~chworkers.workers.supervisor.Supervisor`'s
public face that producers call from any thread: each method encodes its task in the
caller's thread and queues it through the supervisor's
:class:`~chworkers.workers.producer.Producer`, returning a
:class:`concurrent.futures.Future`. The lifecycle half (start, stop, scale, stats) is
the supervisor's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Literal, TypeVar, overload

from chworkers.clickhouse.cluster import Cluster
from chworkers.clickhouse.epochs import TimestampColumns
from chworkers.clickhouse.inserts import InsertResult
from chworkers.clickhouse.schema import Evolve
from chworkers.errors import ConfigError
from chworkers.timeouts import DEFAULT, Timeout
from chworkers.workers import tasks
from chworkers.workers.producer import Producer

if TYPE_CHECKING:
    # Sharded inserts bring numpy: imported when the first one is made, so that a
    # program without shards (the daemon at every start) does not load it.
    from chworkers.clickhouse.sharding import ShardingKey
    from chworkers.workers.shardinsert import ShardedInserts

__all__ = ["Producing"]

R = TypeVar("R")


class Producing:
    """What producers call on a :class:`~chworkers.workers.supervisor.Supervisor`."""

    #: The sharded cluster ClickHouse is (None: not sharded).
    cluster: Cluster | None
    _producer: Producer
    _shard_inserts: ShardedInserts | None

    def insert(
        self,
        table: str,
        rows: object,
        column_names: Sequence[str] | None = None,
        *,
        settings: Mapping[str, object] | None = None,
        deduplication_token: str | None = None,
        timeout: Timeout = DEFAULT,
        shard: int | None = None,
        sharding_key: str | ShardingKey | None = None,
    ) -> Future[int]:
        """Queue an insert of ``rows`` (rows, a mapping of columns, a DataFrame or an Arrow
        table) into ``table`` (on ``shard``, of a sharded cluster); the future's result is
        the number of rows written.

        Of a sharded cluster, ``sharding_key`` (``"sipHash64(user_id)"``, a plain integer
        column, ``"rand()"``; docs/sharding.md) routes each row to the shard a
        ``Distributed`` table with that key would pick: the batch is cut into one part per
        shard, each queued as its own task (with a token derived from the given one, its
        shard in it; else its content's) and confirmed by its shard alone. The future (a
        :class:`~chworkers.workers.shardinsert.ShardedFuture`, whose ``parts`` are the
        shards' own futures) resolves to all rows written, or to a
        :class:`~chworkers.errors.ShardInsertError` naming the shards that failed.

        Rows and columns are encoded to ClickHouse Native here, in the caller's thread
        (``native_encoding``; the first insert into a table looks its columns up). The
        deduplication token (derived from the content when not given) is fixed now, so a
        re-run after a worker crash cannot duplicate rows. Blocks while the queue is
        full, or raises :class:`QueueFullError` after ``timeout`` seconds (by default the
        ``queue_timeout`` setting; None: no limit). A malformed batch raises :class:`BatchError`."""
        if sharding_key is not None:
            return self._sharded(shard, "insert").insert(
                table, rows, column_names, settings, deduplication_token, timeout, sharding_key
            )
        return self._producer.insert(
            table, rows, column_names, settings, deduplication_token, timeout, shard
        )

    def _sharded(self, shard: int | None, where: str) -> ShardedInserts:
        if self.cluster is None:
            raise ConfigError(
                f"{where} by sharding_key needs a sharded cluster: give Supervisor(shards=...)",
                key="sharding_key",
                expected="a supervisor over a sharded cluster",
            )
        if shard is not None:
            raise ConfigError(
                f"{where}: give shard or sharding_key, not both",
                key="shard",
                value=shard,
                expected="None with a sharding_key",
            )
        if self._shard_inserts is None:
            from chworkers.workers.shardinsert import ShardedInserts

            producer = self._producer
            self._shard_inserts = ShardedInserts(
                self.cluster,
                producer.insert,
                lambda table, shard: producer.lookup_schema(table, None, shard),
            )
        return self._shard_inserts

    @overload
    def insert_raw(
        self,
        table: str,
        data: bytes,
        fmt: str,
        *,
        rows: int | None = None,
        column_names: Sequence[str] | None = None,
        settings: Mapping[str, object] | None = None,
        deduplication_token: str | None = None,
        timeout: Timeout = DEFAULT,
        split_bad_rows: Literal[False] = False,
        shard: int | None = None,
        evolve_schema: Evolve | None = None,
        replay: bool = False,
        compress: bool = False,
        timestamps_checked: TimestampColumns | None = None,
    ) -> Future[int]: ...

    @overload
    def insert_raw(
        self,
        table: str,
        data: bytes,
        fmt: str,
        *,
        rows: int | None = None,
        column_names: Sequence[str] | None = None,
        settings: Mapping[str, object] | None = None,
        deduplication_token: str | None = None,
        timeout: Timeout = DEFAULT,
        split_bad_rows: Literal[True],
        shard: int | None = None,
        evolve_schema: Evolve | None = None,
        replay: bool = False,
        compress: bool = False,
        timestamps_checked: TimestampColumns | None = None,
    ) -> Future[InsertResult]: ...

    def insert_raw(
        self,
        table: str,
        data: bytes,
        fmt: str,
        *,
        rows: int | None = None,
        column_names: Sequence[str] | None = None,
        settings: Mapping[str, object] | None = None,
        deduplication_token: str | None = None,
        timeout: Timeout = DEFAULT,
        split_bad_rows: bool = False,
        shard: int | None = None,
        evolve_schema: Evolve | None = None,
        replay: bool = False,
        compress: bool = False,
        timestamps_checked: TimestampColumns | None = None,
    ) -> Future[int] | Future[InsertResult]:
        """Queue an insert of ``data``, bytes already in ClickHouse format ``fmt``
        (``Native``, ``JSONEachRow``, ``CSV``...), sent as they are: a replay with the
        same token is byte-identical. ``rows`` (when known) is how many rows ``data``
        holds: the future's result, the number of rows written, is then those less the
        ones rejected (or ClickHouse's count when it wrote fewer); without it,
        ClickHouse's count, which also holds the rows the table's materialized views
        wrote. Of a sharded cluster, ``shard`` says which shard the data goes to.

        With ``split_bad_rows`` (line formats: JSONEachRow, CSV, TSV and their
        ``*WithNames``), rows ClickHouse rejects for their data are bisected out in the
        worker, within ``split_max_requests`` and ``split_max_seconds``, and the rest is
        inserted; the future's result is then an :class:`~chworkers.clickhouse.inserts.InsertResult`
        whose ``rejected`` holds the records left out and why.

        With ``evolve_schema`` (JSONEachRow sent without ``input_format_skip_unknown_fields``),
        fields the table lacks are added as columns and the insert is sent again
        (:mod:`chworkers.clickhouse.schema`).

        ``replay`` says the caller sent this data under this token before (and may have
        counted it then): ClickHouse drops what it already has, yet counts it as
        written, so its rows count in ``chworkers_rows_replayed_total``, not in
        ``chworkers_rows_inserted_total`` (and in the result's ``replayed``). The
        worker's own retries of a request are not replays.

        With ``compress``, the worker sends the bytes compressed by its connection's codec
        (the ``compress`` connection option: lz4 or zstd; as given when that is false or
        another codec); without it they go as given. The deduplication token is the
        data's, compressed or not.

        ``timestamps_checked`` (JSONEachRow read with ``date_time_input_format =
        best_effort``): the caller already found, with
        :func:`chworkers.clickhouse.epochs.needs_rewrite`, that ``data`` holds no epoch
        number to rewrite for these timestamp columns (a worker's
        :func:`~chworkers.clickhouse.epochs.table_timestamps` of the table). The worker
        then sends it without scanning it again, when the columns it finds for the table
        are the same; otherwise it scans as usual. The daemon checks its batches so, ahead
        of the worker, so that ClickHouse does not wait for the scan."""
        return self._producer.insert_raw(
            table,
            data,
            fmt,
            rows,
            column_names,
            settings,
            deduplication_token,
            timeout,
            split_bad_rows,
            shard,
            evolve_schema,
            replay,
            compress,
            timestamps_checked,
        )

    def submit(self, fn: Callable[..., R], /, *args: object, **kwargs: object) -> Future[R]:
        """Run ``fn(conn, *args, **kwargs)`` in a worker with a leased connection, retried
        per the retry policy. ``fn`` may be a lambda or a closure."""
        return self._producer.call(tasks.SUBMIT, fn, args, kwargs)

    def submit_to(
        self, shard: int, fn: Callable[..., R], /, *args: object, **kwargs: object
    ) -> Future[R]:
        """:meth:`submit` on one ``shard`` of a sharded cluster: ``fn(conn, ...)`` with a
        connection to one of that shard's replicas."""
        return self._producer.call(tasks.SUBMIT, fn, args, kwargs, shard)

    def call(self, fn: Callable[..., R], /, *args: object, **kwargs: object) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` in a worker, without a connection."""
        return self._producer.call(tasks.CALL, fn, args, kwargs)
