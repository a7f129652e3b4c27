"""Row inserts: a plain clickhouse-connect loop, a fork-inherited ``multiprocess.Pool(2)``,
``Supervisor(workers=1/2).insert(rows)``, and rows produced in the workers by
``Supervisor.submit`` (the way the Pool works)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Mapping
from typing import Any

import multiprocess

from chworkers.bench import data
from chworkers.bench.runner import Case, Group, Metric, timed
from chworkers.clickhouse.connection import Connection
from chworkers.workers.supervisor import Supervisor

# The fork-inherited Pool's state: set before the fork, read in its workers.
_POOL_ROWS: list[list[Any]] = []
_POOL_CLIENT: list[Any] = []


def quiet_pool_worker() -> None:
    """A Pool worker ignores Ctrl-C: the benchmark ends it (a traceback from each
    worker would bury the command's own message)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool_init(client_kwargs: dict[str, Any]) -> None:
    import clickhouse_connect

    quiet_pool_worker()
    _POOL_CLIENT[:] = [clickhouse_connect.get_client(**client_kwargs)]


def _pool_insert(job: tuple[str, int]) -> int:
    table, index = job
    batch = _POOL_ROWS[index]
    _POOL_CLIENT[0].insert(table, batch, column_names=data.COLUMNS)
    return len(batch)


def produce_and_insert(conn: Any, table: str, start: int, count: int) -> int:
    """A task that makes its rows in the worker and inserts them (``submit``)."""
    conn.insert(table, data.rows(start, count), column_names=data.COLUMNS)
    return count


def client_kwargs(env: data.Env) -> dict[str, Any]:
    cfg = env.target.config
    host = cfg.hosts[0]
    return {
        "host": host.host,
        "port": host.port,
        "username": cfg.username,
        "password": cfg.password,
        "database": cfg.database,
        "secure": cfg.secure,
        "verify": cfg.verify,
    }


SPREAD = Metric("spread", "x", "lower")  # most tasks on one worker / fewest
#: Issue 11's targets for ``Supervisor(workers=N).insert(rows)`` against the plain loop.
TARGETS = {1: 0.95, 2: 1.2}
POOL2 = "multiprocess.Pool(2), fork-inherited rows"


def supervisor(env: data.Env, stack: contextlib.ExitStack, workers: int) -> Supervisor:
    """A started supervisor on the benchmark's database (``--connections`` requests in
    flight, else one per worker), stopped with ``stack``."""
    connections = env.sizes.connections or workers
    sup = Supervisor(env.target.url, workers=workers, max_connections=connections)
    return stack.enter_context(sup)


def done_by_worker(sup: Supervisor) -> dict[str, int]:
    return {w["name"]: int(w["done"]) for w in sup.stats().workers}


def spread(
    sup: Supervisor, run: Callable[[], Mapping[str, float]]
) -> Callable[[], Mapping[str, float]]:
    """``run``, also reporting how evenly the round's tasks went over the workers: the
    most tasks one worker ran over the fewest (1.0: even), counted outside the timing."""

    def measured() -> Mapping[str, float]:
        before = done_by_worker(sup)
        result = dict(run())
        after = done_by_worker(sup)
        per = [after[name] - before.get(name, 0) for name in after]
        result["spread"] = max(per) / max(1, min(per))
        return result

    return measured


def label(env: data.Env, workers: int) -> str:
    """``Supervisor(workers=2)``, with ``max_connections`` when ``--connections`` sets it."""
    connections = env.sizes.connections
    extra = f", max_connections={connections}" if connections else ""
    return f"Supervisor(workers={workers}{extra})"


def groups(env: data.Env, stack: contextlib.ExitStack) -> list[Group]:
    sizes = env.sizes
    batches = data.batches(sizes)
    total = sizes.rows
    client = env.target.client()
    stack.callback(client.close)

    _POOL_ROWS[:] = batches  # before the fork: the Pool's workers inherit them
    pool = multiprocess.get_context("fork").Pool(
        2, initializer=_pool_init, initargs=(client_kwargs(env),)
    )
    stack.callback(pool.join)
    stack.callback(pool.terminate)
    sups = {w: supervisor(env, stack, w) for w in sizes.workers}
    producer = 2 if 2 in sups else max(sups)

    def fresh(table: str) -> Callable[[], object]:
        return lambda: env.table(client, table)

    def check(table: str, path: str) -> Callable[[], None]:
        return lambda: data.expect(client, table, total, path)

    def plain() -> int:
        for batch in batches:
            client.insert("plain", batch, column_names=data.COLUMNS)
        return total

    def pooled() -> int:
        return sum(pool.map(_pool_insert, [("pool2", i) for i in range(len(batches))]))

    def inserted(sup: Supervisor, table: str) -> Callable[[], int]:
        def run() -> int:
            futures = [sup.insert(table, batch, data.COLUMNS) for batch in batches]
            return sum(int(f.result()) for f in futures)

        return run

    def produced() -> int:
        futures = [
            sups[producer].submit(
                produce_and_insert, "made", start, min(sizes.batch, total - start)
            )
            for start in range(0, total, sizes.batch)
        ]
        return sum(int(f.result()) for f in futures)

    def case(
        name: str,
        table: str,
        run: Callable[[], int],
        versus: str | None = None,
        target: float | None = None,
        sup: Supervisor | None = None,
    ) -> Case:
        measured = timed(run)
        extra: tuple[Metric, ...] = ()
        if sup is not None and sup.options.workers > 1:
            measured, extra = spread(sup, measured), (SPREAD,)
        return Case(name, measured, fresh(table), check(table, name), versus, target, extra)

    cases = [
        case("plain clickhouse-connect loop", "plain", plain),
        case(POOL2, "pool2", pooled),
    ]
    for w, sup in sups.items():
        name = f"{label(env, w)}.insert(rows)"
        cases.append(case(name, f"sup{w}", inserted(sup, f"sup{w}"), None, TARGETS.get(w), sup))
    name = f"{label(env, producer)}.submit(make+insert)"
    target = 1.0 if producer == 2 else None
    cases.append(case(name, "made", produced, POOL2, target, sups[producer]))
    return [
        Group(f"rows: {total:,} in {sizes.batch:,}-row batches", cases, note=sent_as(env, client))
    ]


def sent_as(env: data.Env, client: Any) -> str:
    """How each path's rows cross to the server: every path is to compress them alike
    (clickhouse-connect's default, lz4; chworkers' connections as their ``compress``
    option says, lz4 by default), or the comparison is not of like with like."""
    conn = Connection(env.target.config)
    try:
        ours = conn.client.write_compression or "uncompressed"
    finally:
        conn.close()
    plain = client.write_compression or "uncompressed"
    return f"rows sent {plain} by clickhouse-connect (plain loop, Pool), {ours} by chworkers"
