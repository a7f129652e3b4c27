"""``Supervisor.insert_raw`` against raw POSTs of the same Native payloads, one request
shape at a time: for each size, ``rows // size`` requests of ``size`` rows (at least
:data:`MIN_REQUESTS`, so that a large size is not judged by one request a round).

The POSTs are the same requests ``insert_raw`` makes: the same body (not compressed:
``insert_raw`` sends bytes as given), the settings every chworkers insert carries
(:func:`~chworkers.clickhouse.insertmode.insert_settings`: synchronous, deduplicated) and
a deduplication token, over one kept-alive connection. Their tokens are the ones
``insert_raw`` derives, computed before the timing; ``insert_raw`` derives its own while
timed (a caller may give one instead).

Both sides get the same conditions: each case inserts into a table created for it just
before and dropped right after its count is checked, so that no background merge of one
case's parts runs while the other case is timed (chDB merges a table's fresh parts soon
after they are written: after 20 inserts of 100k rows one was still running, and would
take CPU from the endpoint under whichever case came next). Besides the rate, each round
records when every request was answered: ``first`` (from the start to the first answer: for
``insert_raw`` the token's hash, the copy into shared memory, the dispatch and the first
POST, which nothing overlaps) and ``step`` (the median time between two answers after
it: what each further request costs once the pipeline is full), which say on which side
and where a slow round lost its time.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from chworkers.bench import data
from chworkers.bench.daemon import CPU, ENDPOINT_CPU, per_100k, process_cpu, tree_cpu
from chworkers.bench.rows import label, supervisor
from chworkers.bench.runner import ROWS_PER_S, Case, Group, Metric
from chworkers.clickhouse.insertmode import insert_settings
from chworkers.errors import BenchError
from chworkers.workers import tasks

#: The payload, made by the server itself (exactly the table's types).
PAYLOAD_SQL = (
    "SELECT number + {start} AS id, concat('user-', toString((number + {start}) % 1000)) AS user, "
    "toDateTime('2026-01-01 00:00:00') + ((number + {start}) % 86400) AS ts, "
    "(number + {start}) * 0.25 AS value FROM numbers({size})"
)

#: From the round's start to the first request's answer.
FIRST = Metric("first", "ms", "lower")
#: The median time between two answers after the first.
STEP = Metric("step", "ms", "lower")

#: Requests of each size a round makes at least (``--rows`` divided by a large size would
#: be one request, a handful of samples per run).
MIN_REQUESTS = 3


class Payloads:
    """The Native payloads of one request size (distinct ids each, so that no request
    is deduplicated as a repeat of another), made when first asked for; only one size's
    are kept at a time."""

    def __init__(self, client: object) -> None:
        self.client = client
        self.size = 0
        self.bodies: list[bytes] = []

    def get(self, size: int, count: int) -> list[bytes]:
        if size != self.size:
            self.bodies = []
            for n in range(count):
                sql = PAYLOAD_SQL.format(start=n * size, size=size)
                self.bodies.append(self.client.raw_query(sql, fmt="Native"))  # type: ignore[attr-defined]
            self.size = size
        return self.bodies


def post_settings(table: str, body: bytes) -> dict[str, object]:
    """What ``insert_raw(table, body, "Native")`` sends with its body: the settings of a
    synchronous chworkers insert and the token it derives from the body."""
    return insert_settings(None, token=tasks.raw_token(table, body, "Native"))


def measured(
    amount: Callable[[list[float]], int], endpoint: int | None
) -> Callable[[], Mapping[str, float]]:
    """A case's ``run`` from a function that does the work, appending the time
    (``time.perf_counter``) each request was answered to the list it is given, and
    returns its rows: the rate, ``first`` and ``step`` (see the module's doc), and (Linux)
    the CPU per 100k rows of the path's processes (this one, and the supervisor's fork
    server and worker: the benchmark's process tree without the endpoint) and of the
    embedded endpoint. The CPU is read before and after the timing."""
    proc = Path("/proc").is_dir()

    def cpu() -> tuple[float, float]:
        if not proc:
            return 0.0, 0.0
        server = process_cpu(endpoint)
        return tree_cpu(os.getpid()) - server, server  # the embedded endpoint is a child

    def run() -> Mapping[str, float]:
        answers: list[float] = []
        before = cpu()
        start = time.perf_counter()
        done = amount(answers)
        elapsed = time.perf_counter() - start
        after = cpu()
        out = {"rate": done / max(elapsed, 1e-9), **answer_times(start, answers)}
        if proc:
            out["cpu"] = per_100k(after[0] - before[0], done)
            if endpoint is not None:
                out["endpoint_cpu"] = per_100k(after[1] - before[1], done)
        return out

    return run


def answer_times(start: float, answers: list[float]) -> dict[str, float]:
    """``first`` and ``step`` in ms from the round's ``start`` and its requests' answer
    times (at least two)."""
    if len(answers) < 2:
        raise BenchError(f"a raw round needs two answers or more to time, not {len(answers)}")
    ordered = sorted(answers)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    return {"first": (ordered[0] - start) * 1e3, "step": statistics.median(gaps) * 1e3}


def groups(env: data.Env, stack: contextlib.ExitStack) -> list[Group]:
    client = env.target.client()
    stack.callback(client.close)
    http = env.target.http()
    stack.callback(http.close)
    sup = supervisor(env, stack, 1)
    payloads = Payloads(client)

    def check(table: str, total: int, path: str) -> Callable[[], None]:
        def run() -> None:
            data.expect(client, table, total, path)
            env.target.drop_table(client, table)  # its merges end with it

        return run

    endpoint = env.target.pid
    metrics: tuple[Metric, ...] = (ROWS_PER_S, FIRST, STEP)
    if Path("/proc").is_dir():
        metrics += (CPU,) if endpoint is None else (CPU, ENDPOINT_CPU)
    out = []
    for size in env.sizes.raw_sizes:
        count = max(MIN_REQUESTS, env.sizes.rows // size)
        total = count * size

        settings: list[dict[str, object]] = []

        def before(
            table: str,
            size: int = size,
            count: int = count,
            settings: list[dict[str, object]] = settings,
        ) -> Callable[[], None]:
            def run() -> None:
                bodies = payloads.get(size, count)
                if table == "raw_post" and not settings:
                    settings.extend(post_settings("raw_sup", body) for body in bodies)
                env.table(client, table)

            return run

        def posted(
            answers: list[float],
            size: int = size,
            count: int = count,
            total: int = total,
            settings: list[dict[str, object]] = settings,
        ) -> int:
            for body, params in zip(payloads.get(size, count), settings, strict=True):
                http.post("INSERT INTO raw_post FORMAT Native", body, params)
                answers.append(time.perf_counter())
            return total

        def inserted(
            answers: list[float], size: int = size, count: int = count, total: int = total
        ) -> int:
            futures = []
            answered = threading.Semaphore(0)

            def answer(_: object) -> None:  # on the supervisor's loop, as the answer arrives
                answers.append(time.perf_counter())
                answered.release()

            for body in payloads.get(size, count):
                future = sup.insert_raw("raw_sup", body, "Native", rows=size)
                future.add_done_callback(answer)
                futures.append(future)
            rows = sum(int(f.result()) for f in futures)
            for _ in futures:  # a future's result is out before its callbacks have run
                answered.acquire()
            return rows

        out.append(
            Group(
                f"raw: {count:,} Native request(s) of {size:,} rows",
                [
                    Case(
                        "raw POST (http.client)",
                        measured(posted, endpoint),
                        before("raw_post"),
                        check("raw_post", total, "raw POST"),
                    ),
                    Case(
                        f"{label(env, 1)}.insert_raw",
                        measured(inserted, endpoint),
                        before("raw_sup"),
                        check("raw_sup", total, "insert_raw"),
                        target={"rate": 0.8},
                    ),
                ],
                metrics=metrics,
            )
        )
    return out
