"""Task dispatch: ``sup.submit(trivial)`` (a leased connection per task) and
``sup.call(trivial)`` (none) against ``multiprocess.Pool(2).apply_async``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import multiprocess

from chworkers.bench import data
from chworkers.bench.rows import SPREAD, label, quiet_pool_worker, spread, supervisor
from chworkers.bench.runner import TASKS_PER_S, Case, Group, timed


def nothing() -> None:
    """The trivial task (``call`` and ``apply_async``)."""


def nothing_with(conn: Any) -> None:
    """The trivial task with a leased connection it does not use (``submit``)."""


def groups(env: data.Env, stack: contextlib.ExitStack) -> list[Group]:
    n = env.sizes.tasks
    pool = multiprocess.get_context("fork").Pool(2, initializer=quiet_pool_worker)
    stack.callback(pool.join)
    stack.callback(pool.terminate)
    sup = supervisor(env, stack, 2)

    def applied() -> int:
        for result in [pool.apply_async(nothing) for _ in range(n)]:
            result.get()
        return n

    def through(send: Callable[..., Any], fn: Callable[..., None]) -> Callable[[], int]:
        def run() -> int:
            for future in [send(fn) for _ in range(n)]:
                future.result()
            return n

        return run

    return [
        Group(
            f"tasks: {n:,} trivial tasks on 2 workers",
            [
                Case("multiprocess.Pool(2).apply_async", timed(applied)),
                Case(
                    f"{label(env, 2)}.submit (leased connection)",
                    spread(sup, timed(through(sup.submit, nothing_with))),
                    target=1.0,
                    extra=(SPREAD,),
                ),
                Case(
                    f"{label(env, 2)}.call (no connection)",
                    spread(sup, timed(through(sup.call, nothing))),
                    extra=(SPREAD,),
                ),
            ],
            metrics=(TASKS_PER_S,),
        )
    ]
