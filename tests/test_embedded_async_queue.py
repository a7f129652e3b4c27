"""The embedded endpoint's asynchronous insert queue, through clickhouse-connect.

As a ClickHouse server: INSERTs with ``async_insert=1`` from many clients are written
together, one part per flush; each client gets its own answer (its own parse error, or
its own rows in ``written_rows``); entries are deduplicated one by one (by token, or by
their data); the busy timeout, ``SYSTEM FLUSH ASYNC INSERT QUEUE`` and a graceful stop
flush; a crash loses what was not flushed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from chclients import make_client, unique_name
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from waiting import wait_for

from chworkers import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)

#: A fixed busy timeout long enough for concurrent clients to meet in one batch.
GATHER = {"async_insert": 1, "async_insert_use_adaptive_busy_timeout": 0}


def make_table(client: Client, window: int = 100) -> str:
    name = unique_name("aq")
    client.command(
        f"CREATE TABLE {name} (k UInt64, s String DEFAULT 'x') ENGINE = MergeTree ORDER BY k "
        f"SETTINGS non_replicated_deduplication_window = {window}"
    )
    client.command(f"SYSTEM STOP MERGES {name}")
    return name


def parts(client: Client, table: str) -> int:
    return int(
        client.command(
            f"SELECT count() FROM system.parts WHERE database = currentDatabase() "
            f"AND table = '{table}' AND active"
        )
    )


def count(client: Client, table: str) -> int:
    return int(client.command(f"SELECT count() FROM {table}"))


def jsonl(*keys: int) -> bytes:
    return b"".join(b'{"k":%d}\n' % k for k in keys)


def concurrently(*calls: Any) -> list[Any]:
    """Run the calls at once, each on its own thread; their results or exceptions."""
    out: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = calls[i]()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_many_small_inserts_become_few_parts(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    table = make_table(ch_client)
    clients = [make_client(endpoint, database=database) for _ in range(12)]
    settings = {**GATHER, "async_insert_busy_timeout_max_ms": 1500}

    def insert(i: int) -> int:
        summary = clients[i].raw_insert(
            table, None, jsonl(*range(i * 10, i * 10 + 5)), settings=settings, fmt="JSONEachRow"
        )
        return int(summary.written_rows)

    before = endpoint.stats()
    written = concurrently(*(lambda i=i: insert(i) for i in range(12)))
    after = endpoint.stats()
    assert written == [5] * 12  # each client's own rows
    assert after["async_inserts_total"] - before["async_inserts_total"] == 12
    assert after["async_flushes_total"] - before["async_flushes_total"] <= 3
    assert count(ch_client, table) == 60
    assert parts(ch_client, table) <= 3  # one per flush; 12 when each insert wrote its own


def test_each_client_gets_its_own_parse_error(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    table = make_table(ch_client)
    clients = [make_client(endpoint, database=database) for _ in range(4)]
    settings = {**GATHER, "async_insert_busy_timeout_max_ms": 1500}
    bodies = [jsonl(1, 2), b'{"k":3}\n{"k":"three"}\n', jsonl(4), jsonl(5, 6)]

    def insert(i: int) -> int:
        summary = clients[i].raw_insert(
            table, None, bodies[i], settings=settings, fmt="JSONEachRow"
        )
        return int(summary.written_rows)

    results = concurrently(*(lambda i=i: insert(i) for i in range(4)))
    assert isinstance(results[1], DatabaseError)
    assert "three" in str(results[1]) or "Cannot parse" in str(results[1])
    assert [results[0], results[2], results[3]] == [2, 1, 2]
    assert sorted(r[0] for r in ch_client.query(f"SELECT k FROM {table}").result_rows) == [
        1,
        2,
        4,
        5,
        6,
    ]  # none of the bad entry's rows, not even its good first row
    assert parts(ch_client, table) <= 2


def test_replays_are_dropped_entry_by_entry(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    table = make_table(ch_client)
    fast = {"async_insert": 1, "async_insert_busy_timeout_max_ms": 50}

    def insert(body: bytes, token: str = "") -> int:
        settings = dict(fast, insert_deduplication_token=token) if token else fast
        summary = ch_client.raw_insert(table, None, body, settings=settings, fmt="JSONEachRow")
        return int(summary.written_rows)

    assert insert(jsonl(1, 2), "a") == 2
    assert insert(jsonl(1, 2), "a") == 0  # the same token: dropped
    assert insert(jsonl(3), "b") == 1
    assert insert(jsonl(7)) == 1
    assert insert(jsonl(7)) == 0  # no token: the same data is a replay
    assert count(ch_client, table) == 4
    # Two entries with one token in the same flush: the first is written.
    slow = {**GATHER, "async_insert_busy_timeout_max_ms": 1500, "insert_deduplication_token": "c"}
    other = make_client(endpoint, database=database)
    results = concurrently(
        lambda: ch_client.raw_insert(table, None, jsonl(10), settings=slow, fmt="JSONEachRow"),
        lambda: other.raw_insert(table, None, jsonl(11), settings=slow, fmt="JSONEachRow"),
    )
    assert sorted(int(r.written_rows) for r in results) == [0, 1]
    assert count(ch_client, table) == 5


def test_a_table_without_a_window_does_not_deduplicate(ch_client: Client) -> None:
    table = make_table(ch_client, window=0)
    settings = {"async_insert": 1, "async_insert_busy_timeout_max_ms": 50}
    for _ in range(2):
        ch_client.raw_insert(table, None, jsonl(1), settings=settings, fmt="JSONEachRow")
    assert count(ch_client, table) == 2


def test_the_busy_timeout_is_honoured(ch_client: Client) -> None:
    table = make_table(ch_client)
    settings = {**GATHER, "async_insert_busy_timeout_max_ms": 3000, "wait_for_async_insert": 0}
    started = time.monotonic()
    ch_client.raw_insert(table, None, jsonl(1), settings=settings, fmt="JSONEachRow")
    if time.monotonic() - started < 2.5:  # answered at once, not yet written
        assert count(ch_client, table) == 0
    wait_for(lambda: count(ch_client, table) == 1, timeout=60)
    waited = {**GATHER, "async_insert_busy_timeout_max_ms": 700}
    started = time.monotonic()
    ch_client.raw_insert(table, None, jsonl(2), settings=waited, fmt="JSONEachRow")
    assert time.monotonic() - started >= 0.65  # it waited for the flush
    assert count(ch_client, table) == 2


def test_system_flush_async_insert_queue(ch_client: Client) -> None:
    table = make_table(ch_client)
    settings = {**GATHER, "async_insert_busy_timeout_max_ms": 60000, "wait_for_async_insert": 0}
    ch_client.raw_insert(table, None, jsonl(1, 2), settings=settings, fmt="JSONEachRow")
    assert count(ch_client, table) == 0
    ch_client.command(f"SYSTEM FLUSH ASYNC INSERT QUEUE {table}")
    assert count(ch_client, table) == 2


def test_system_asynchronous_inserts_shows_what_waits(ch_client: Client) -> None:
    table = make_table(ch_client)
    settings = {**GATHER, "async_insert_busy_timeout_max_ms": 60000, "wait_for_async_insert": 0}
    for keys in ((1, 2), (3,)):
        ch_client.raw_insert(table, None, jsonl(*keys), settings=settings, fmt="JSONEachRow")
    query = (
        "SELECT table, format, total_bytes, length(entries.query_id), first_update <= now64() "
        f"FROM system.asynchronous_inserts WHERE database = currentDatabase() AND table = '{table}'"
    )
    assert ch_client.query(query).result_rows == [
        (table, "JSONEachRow", len(jsonl(1, 2, 3)), 2, True)
    ]
    ch_client.command("SYSTEM FLUSH ASYNC INSERT QUEUE")
    assert ch_client.query(query).result_rows == []
    assert count(ch_client, table) == 3


def test_too_much_data_is_written_synchronously(ch_client: Client) -> None:
    table = make_table(ch_client)
    settings = {
        **GATHER,
        "async_insert_busy_timeout_max_ms": 60000,
        "async_insert_max_data_size": 16,
        "wait_for_async_insert_timeout": 5,
    }
    summary = ch_client.raw_insert(
        table, None, jsonl(1, 2, 3), settings=settings, fmt="JSONEachRow"
    )
    assert int(summary.written_rows) == 3
    assert count(ch_client, table) == 3


def test_without_async_insert_an_insert_is_written_at_once(ch_client: Client) -> None:
    table = make_table(ch_client)
    assert ch_client.command("SELECT getSetting('async_insert')") == "false"
    ch_client.raw_insert(
        table,
        None,
        jsonl(1),
        settings={"async_insert_busy_timeout_max_ms": 60000, "wait_for_async_insert_timeout": 5},
        fmt="JSONEachRow",
    )
    assert count(ch_client, table) == 1


def test_a_session_set_and_a_settings_clause_queue_too(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    table = make_table(ch_client)
    session = make_client(endpoint, database=database, session_id=unique_name("s"))
    session.command("SET async_insert = 1, wait_for_async_insert = 0")
    session.command("SET async_insert_busy_timeout_max_ms = 60000")
    session.command("SET async_insert_use_adaptive_busy_timeout = 0")
    session.command(f"INSERT INTO {table} (k) VALUES (1)")
    ch_client.command(
        f"INSERT INTO {table} (k) SETTINGS async_insert = 1, wait_for_async_insert = 0, "
        "async_insert_busy_timeout_max_ms = 60000, async_insert_use_adaptive_busy_timeout = 0 "
        "VALUES (2)"
    )
    assert count(ch_client, table) == 0
    ch_client.command("SYSTEM FLUSH ASYNC INSERT QUEUE")
    assert count(ch_client, table) == 2


def test_an_unknown_table_is_refused_before_queuing(ch_client: Client) -> None:
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE"):
        ch_client.raw_insert(
            "no_such_table",
            None,
            jsonl(1),
            settings={"async_insert": 1, "wait_for_async_insert": 0},
            fmt="JSONEachRow",
        )


def test_a_table_that_says_async_insert_queues_every_insert(ch_client: Client) -> None:
    table = unique_name("aq")
    ch_client.command(
        f"CREATE TABLE {table} (k UInt64) ENGINE = MergeTree ORDER BY k SETTINGS async_insert = 1"
    )
    later = {
        "async_insert": 0,  # the table's setting wins, as on a server
        "async_insert_use_adaptive_busy_timeout": 0,
        "async_insert_busy_timeout_max_ms": 60000,
        "wait_for_async_insert": 0,
    }
    ch_client.raw_insert(table, None, jsonl(1), settings=later, fmt="JSONEachRow")
    assert count(ch_client, table) == 0
    ch_client.command(f"SYSTEM FLUSH ASYNC INSERT QUEUE {table}")
    assert count(ch_client, table) == 1
