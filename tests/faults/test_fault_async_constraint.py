"""An asynchronous insert violating a table's CONSTRAINT was answered as written.

Each entry of a flush was parsed into a temporary ``Memory`` table made ``AS`` the
target, constraints included, by chDB's streaming insert, which swallows
VIOLATED_CONSTRAINT (the table throws it as the insert commits): the entry was counted
written (``written_rows`` 2) and none of its rows reached the table, with no error. As
in ClickHouse (``AsynchronousInsertQueue::processData``: the entries are parsed, then
the flush's one insert checks the constraints on the whole block), the staging table
now has no constraints and the flush's insert checks them: a violation fails the
flush, every client of it.
"""

from __future__ import annotations

import threading

import pytest
from chclients import make_client, unique_name
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from chworkers import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)


def test_a_violated_constraint_fails_the_whole_flush(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    table = unique_name("acf")
    ch_client.command(
        f"CREATE TABLE {table} (k UInt64, CONSTRAINT small CHECK k < 10) "
        "ENGINE = MergeTree ORDER BY k"
    )
    settings = {
        "async_insert": 1,
        "async_insert_use_adaptive_busy_timeout": 0,
        "async_insert_busy_timeout_max_ms": 1500,
    }
    bodies = [b'{"k":1}\n{"k":20}\n', b'{"k":2}\n']  # the second is fine on its own
    clients = [make_client(endpoint, database=database) for _ in bodies]
    outcomes: list[object] = [None, None]
    start = threading.Barrier(len(bodies))

    def insert(i: int) -> None:
        start.wait()
        try:
            summary = clients[i].raw_insert(
                table, None, bodies[i], settings=settings, fmt="JSONEachRow"
            )
            outcomes[i] = int(summary.written_rows)
        except DatabaseError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=insert, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for outcome in outcomes:
        assert isinstance(outcome, DatabaseError)
        assert "VIOLATED_CONSTRAINT" in str(outcome)
    assert ch_client.command(f"SELECT count() FROM {table}") == 0
    # Alone, within the constraint: written.
    alone = {**settings, "async_insert_busy_timeout_max_ms": 50}
    summary = ch_client.raw_insert(table, None, bodies[1], settings=alone, fmt="JSONEachRow")
    assert int(summary.written_rows) == 1
    assert ch_client.command(f"SELECT count() FROM {table}") == 1
