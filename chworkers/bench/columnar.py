"""Columnar inserts: ``sup.insert(DataFrame)`` against clickhouse-connect's ``insert_df``,
and ``sup.insert`` of Arrow tables and of slices of one big table against
``insert_arrow``; each with the ``--workers`` counts (1 and 2 by default)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Sequence
from typing import Any

from chworkers.bench import data
from chworkers.bench.rows import label, supervisor
from chworkers.bench.runner import Case, Group, timed
from chworkers.workers.supervisor import Supervisor

#: Optional packages this family needs (the command says so when one is missing).
REQUIRES = ("numpy", "pandas", "pyarrow")


def _module(name: str) -> Any:
    # Imported by name: optional packages, without type stubs in every environment.
    return importlib.import_module(name)


def frames(batches: Sequence[list[Any]]) -> list[Any]:
    """The batches as pandas DataFrames with the table's dtypes."""
    np, pd = _module("numpy"), _module("pandas")
    out = []
    for batch in batches:
        cols = data.columns(batch)
        out.append(
            pd.DataFrame(
                {
                    "id": np.array(cols["id"], dtype=np.uint64),
                    "user": cols["user"],
                    "ts": np.array(cols["ts"], dtype="datetime64[s]"),
                    "value": np.array(cols["value"], dtype=np.float64),
                }
            )
        )
    return out


def arrow_table(batch: list[Any]) -> Any:
    """``batch`` as a pyarrow Table with the table's types."""
    pa = _module("pyarrow")
    cols = data.columns(batch)
    return pa.table(
        {
            "id": pa.array(cols["id"], pa.uint64()),
            "user": pa.array(cols["user"], pa.string()),
            "ts": pa.array(cols["ts"], pa.timestamp("s")),
            "value": pa.array(cols["value"], pa.float64()),
        }
    )


def groups(env: data.Env, stack: contextlib.ExitStack) -> list[Group]:
    sizes = env.sizes
    batches = data.batches(sizes)
    total = sizes.rows
    client = env.target.client()
    stack.callback(client.close)
    sups = {w: supervisor(env, stack, w) for w in sizes.workers}

    dfs = frames(batches)
    tables = [arrow_table(b) for b in batches]
    whole = arrow_table(data.rows(0, total))
    slices = [whole.slice(start, sizes.batch) for start in range(0, total, sizes.batch)]

    def case(name: str, table: str, run: Callable[[], int], target: float | None = None) -> Case:
        return Case(
            name,
            timed(run),
            before=lambda: env.table(client, table),
            after=lambda: data.expect(client, table, total, name),
            target=target,
        )

    def direct(method: str, table: str, items: Sequence[Any]) -> Callable[[], int]:
        def run() -> int:
            insert = getattr(client, method)
            for item in items:
                insert(table, item)
            return total

        return run

    def through(sup: Supervisor, table: str, items: Sequence[Any]) -> Callable[[], int]:
        def run() -> int:
            futures = [sup.insert(table, item) for item in items]
            return sum(int(f.result()) for f in futures)

        return run

    out = []
    for key, kind, method, items in (
        ("df", "DataFrame", "insert_df", dfs),
        ("arrow", "Arrow table", "insert_arrow", tables),
        ("slice", "Arrow slice", "insert_arrow", slices),
    ):
        title = f"columnar: {total:,} rows as {kind}s of {sizes.batch:,}"
        if key == "slice":
            title += " (of one table)"
        cases = [
            case(f"clickhouse-connect {method}", f"cc_{key}", direct(method, f"cc_{key}", items))
        ]
        for w, sup in sups.items():
            table = f"s{w}_{key}"
            name = f"{label(env, w)}.insert({kind})"
            cases.append(case(name, table, through(sup, table, items), 1.0 if w == 1 else None))
        out.append(Group(title, cases))
    return out
