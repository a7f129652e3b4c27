"""``chworkers bench --only raw``: a case's table does not outlive its count check.

Before: each side's table stayed until the next round created it again, and chDB merges
a table's fresh parts in the background (after 20 inserts of 100k rows one was still
running), under whichever case was timed next: one side paid for the other's merges.
Now a case's table is dropped as soon as its rows are counted, and each round says when
its first request was answered and what each further one took (``first``, ``step``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from chclients import make_client, unique_name

from chworkers.bench import data, raw
from chworkers.bench.target import open_target
from chworkers.embedded import EmbeddedClickHouse


def test_a_raw_case_drops_its_table_once_counted(
    endpoint: EmbeddedClickHouse, tmp_path: Path, restore_logging: Any
) -> None:
    db = unique_name("bench")
    sizes = data.Sizes(rows=3000, raw_sizes=(1000,), rounds=1)
    admin = make_client(endpoint)
    try:
        with open_target(endpoint.url, db) as target, contextlib.ExitStack() as stack:
            [group] = raw.groups(data.Env(target, sizes, tmp_path), stack)
            for case, table in zip(group.cases, ("raw_post", "raw_sup"), strict=True):
                assert case.before is not None and case.after is not None
                case.before()
                measured = case.run()
                assert admin.command(f"SELECT count() FROM {db}.{table}") == 3000
                case.after()  # counts the rows, then drops the table
                assert admin.command(f"EXISTS TABLE {db}.{table}") == 0
                assert measured["first"] > 0 and measured["step"] > 0
    finally:
        admin.close()
