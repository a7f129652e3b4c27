"""Running one task in a worker: a function call, a submitted function, an insert.

:func:`execute` decodes a task's payload and runs it (the worker's loop calls it under
the middleware hooks); :func:`insert` runs an insert task on the worker's pool, with
its retry policy, its bisection of rejected rows, its split by partition and its
schema evolution (:func:`chworkers.clickhouse.inserts.run_insert`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from chworkers.clickhouse import schema
from chworkers.clickhouse.inserts import InsertResult, run_insert
from chworkers.clickhouse.partitions import partition_keys
from chworkers.clickhouse.presplit import Learning
from chworkers.workers import tasks
from chworkers.workers.context import Connections, TaskInfo, WorkerContext

__all__ = ["execute", "insert"]


def execute(worker: WorkerContext, info: TaskInfo, payload: bytes, buffers: Sequence[Any]) -> Any:
    """Run one task's payload in this worker."""
    if info.kind == tasks.CALL:
        fn, args, kwargs, _ = tasks.decode_call(payload, buffers)
        return fn(*args, **kwargs)
    connections = worker.connections
    if connections is None:
        raise RuntimeError(f"a {info.kind} task needs a ClickHouse connection")
    retry = worker.settings.get("retry")
    if info.kind == tasks.SUBMIT:
        fn, args, kwargs, shard = tasks.decode_call(payload, buffers)
        info.shard = shard
        return connections.with_connection(
            lambda conn: fn(conn, *args, **kwargs), retry=retry, shard=shard
        )
    if info.kind == tasks.INSERT:
        spec = tasks.decode_insert(payload, buffers)
        info.table, info.rows, info.shard = spec.table, spec.rows, spec.shard
        return insert(worker, connections, spec, retry)
    raise ValueError(f"unknown task kind {info.kind!r}")


def insert(
    worker: WorkerContext, connections: Connections, spec: tasks.InsertSpec, retry: Any = None
) -> InsertResult:
    """Run an insert task: one request, or (with ``spec.split``) a bisection of the rows
    ClickHouse rejects (:func:`chworkers.clickhouse.inserts.run_insert`).

    Each request runs on a leased connection under the worker's retry policy, beats the
    heartbeat first and is timed in ``insert_duration`` when it succeeds.
    """
    names = list(spec.column_names) if spec.column_names is not None else None

    def request(conn: Any, data: Any, token: str) -> Any:
        if spec.form == "raw":
            # One that may be split by partition comes with the settings of one block
            # (Producer.insert_raw: refused whole or not at all).
            return conn.raw_insert(
                spec.table,
                data,
                fmt=spec.fmt,
                column_names=names,
                settings=spec.settings,
                deduplication_token=token,
                compress=spec.compress,
                timestamps_checked=spec.timestamps_checked,
            )
        return conn.insert(
            spec.table,
            data,
            names,
            column_oriented=spec.form == "columns",
            settings=spec.settings,
            deduplication_token=token,
        )

    def send(data: Any, token: str) -> tuple[int, int] | None:
        def attempt(conn: Any) -> Any:
            worker.beat()
            started = time.monotonic()
            summary = request(conn, data, token)
            worker.metrics.observe("insert_duration", time.monotonic() - started, spec.table)
            return summary

        summary = connections.with_connection(attempt, retry=retry, shard=spec.shard)
        reported = getattr(summary, "summary", None)
        if isinstance(reported, dict) and "written_rows" in reported:
            return int(summary.written_rows), int(summary.written_bytes())
        return None

    def partitions(data: bytes) -> tuple[list[str], int]:
        fmt = spec.fmt or ""
        return connections.with_connection(  # type: ignore[no-any-return]
            lambda conn: partition_keys(conn, spec.table, fmt, data, spec.settings),
            retry=retry,
            shard=spec.shard,
        )

    def evolve(data: bytes) -> int:
        policy = spec.evolve
        assert policy is not None
        added = connections.with_connection(
            lambda conn: schema.evolve(conn, spec.table, data, policy),
            retry=retry,
            shard=spec.shard,
        )
        return len(added)

    # Raw: bytes, or a view of them (a memory file's), sent as they are, no copy (cut
    # into records only if ClickHouse refuses them).
    data: Any = spec.data
    result = run_insert(
        data,
        spec.token,
        send,
        fmt=spec.fmt,
        budget=spec.split,
        partitions=partitions if spec.split is not None else None,
        learning=Learning(
            # The table (of its shard) and the limit it is given: another limit, another
            # verdict.
            f"{spec.table}@{spec.shard}"
            f"/{(spec.settings or {}).get('max_partitions_per_insert_block', '')}",
            counted=lambda how: worker.metrics.inc("partition_splits", spec.table, how),
        ),
        evolve=evolve if spec.evolve is not None else None,
    )
    return result
