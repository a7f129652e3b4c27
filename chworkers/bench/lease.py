"""Cross-process lease round trips (``acquire`` + ``release`` from another process to
the broker's thread) against the floor for any such round trip: a message echoed back
over a ``multiprocess`` Pipe by a thread of this process."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import multiprocess

from chworkers.bench import data
from chworkers.bench.runner import Case, Group, Metric
from chworkers.clickhouse.lease import LeaseBroker

P50 = Metric("p50", "us", "lower")
P99 = Metric("p99", "us", "lower")
_WARM_UP = 200


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p99 of ``samples`` (seconds) in microseconds."""
    ordered = sorted(samples)
    last = len(ordered) - 1
    return {
        "p50": ordered[min(last, int(0.50 * len(ordered)))] * 1e6,
        "p99": ordered[min(last, int(0.99 * len(ordered)))] * 1e6,
    }


def _timed_trips(trip: Callable[[], None], n: int) -> dict[str, float]:
    for _ in range(_WARM_UP):
        trip()
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        trip()
        samples.append(clock() - start)
    return percentiles(samples)


def _lease_child(client: Any, n: int, out: Any) -> None:
    def trip() -> None:
        client.acquire(5)
        client.release()

    out.send(_timed_trips(trip, n))


def _echo_child(conn: Any, n: int, out: Any) -> None:
    def trip() -> None:
        conn.send(b"x")
        conn.recv()

    out.send(_timed_trips(trip, n))
    conn.send(None)


def _in_child(target: Callable[..., None], args: tuple[Any, ...]) -> dict[str, float]:
    ctx = multiprocess.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=target, args=(*args, send), daemon=True)
    child.start()
    try:
        if not receive.poll(300):
            raise TimeoutError("the measuring child did not answer within 300 s")
        result: dict[str, float] = receive.recv()
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    return result


def groups(env: data.Env, stack: contextlib.ExitStack) -> list[Group]:
    n = env.sizes.lease_trips
    ctx = multiprocess.get_context("fork")
    broker = LeaseBroker(2, context=ctx)
    broker.start()
    stack.callback(broker.close)
    client = broker.client("bench")

    def echoed() -> Mapping[str, float]:
        here, there = ctx.Pipe()

        def serve() -> None:
            while (msg := here.recv()) is not None:
                here.send(msg)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            return _in_child(_echo_child, (there, n))
        finally:
            thread.join(10)
            here.close()
            there.close()

    def leased() -> Mapping[str, float]:
        return _in_child(_lease_child, (client, n))

    return [
        Group(
            f"lease: {n:,} acquire+release round trips from another process",
            [
                Case("raw Pipe echo (a thread of this process)", echoed),
                Case("LeaseBroker acquire+release", leased),
            ],
            metrics=(P50, P99),
            note="issue 11's targets: lease p50 <= 50 us, p99 <= 200 us",
        )
    ]
