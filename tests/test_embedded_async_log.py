"""``system.asynchronous_insert_log`` of the embedded endpoint, through clickhouse-connect.

As a server: one row per asynchronous insert, written at its flush (visible after
``SYSTEM FLUSH LOGS``), with its own rows, bytes and status (``Ok``, ``ParsingError``,
``FlushError``) and the flush's time and query id. Kept across a restart:
tests/faults/test_fault_async_queue.py (a stop and a start) checks it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest
from chclients import make_client, unique_name
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from chworkers import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)

GATHER = {
    "async_insert": 1,
    "async_insert_use_adaptive_busy_timeout": 0,
    "async_insert_busy_timeout_max_ms": 1500,
}


def logged(client: Client, table: str) -> list[tuple[Any, ...]]:
    client.command("SYSTEM FLUSH LOGS")
    return list(
        client.query(
            "SELECT query_id, status, rows, bytes, exception != '', flush_query_id, format, "
            "query, event_time <= flush_time, event_date = toDate(event_time) "
            "FROM system.asynchronous_insert_log "
            f"WHERE database = currentDatabase() AND table = '{table}' ORDER BY query_id"
        ).result_rows
    )


def test_each_insert_of_a_flush_is_logged_with_its_own_outcome(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    table = unique_name("al")
    ch_client.command(
        f"CREATE TABLE {table} (k UInt64) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    bodies = {"q1": b'{"k":1}\n{"k":2}\n', "q2": b'{"k":"x"}\n', "q3": b'{"k":3}\n'}
    clients = {q: make_client(endpoint, database=database) for q in bodies}
    start = threading.Barrier(len(bodies))

    def insert(query_id: str) -> None:
        start.wait()
        settings = {**GATHER, "query_id": f"{table}-{query_id}"}
        with contextlib.suppress(DatabaseError):  # q2's own parse error
            clients[query_id].raw_insert(
                table, None, bodies[query_id], settings=settings, fmt="JSONEachRow"
            )

    threads = [threading.Thread(target=insert, args=(q,)) for q in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = logged(ch_client, table)
    statuses = [(r[0].rsplit("-", 1)[1], r[1], r[2], r[3], r[4]) for r in rows]
    assert statuses == [
        ("q1", "Ok", 2, len(bodies["q1"]), False),
        ("q2", "ParsingError", 0, len(bodies["q2"]), True),
        ("q3", "Ok", 1, len(bodies["q3"]), False),
    ]
    assert len({r[5] for r in rows}) == 1 and rows[0][5]  # one flush, its query id
    assert {r[6] for r in rows} == {"JSONEachRow"}
    assert all(r[7].startswith(f"INSERT INTO {table}") for r in rows)
    assert all(r[8] and r[9] for r in rows)


def test_a_failed_flush_is_every_insert_s_flush_error(ch_client: Client) -> None:
    table = unique_name("al")
    ch_client.command(
        f"CREATE TABLE {table} (k UInt64, CONSTRAINT small CHECK k < 10) "
        "ENGINE = MergeTree ORDER BY k"
    )
    settings = {**GATHER, "async_insert_busy_timeout_max_ms": 50, "query_id": f"{table}-q"}
    with pytest.raises(DatabaseError, match="VIOLATED_CONSTRAINT"):
        ch_client.raw_insert(
            table, None, b'{"k":1}\n{"k":20}\n', settings=settings, fmt="JSONEachRow"
        )
    rows = logged(ch_client, table)
    assert [(r[1], r[2], r[4]) for r in rows] == [("FlushError", 2, True)]
