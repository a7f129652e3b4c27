"""The embedded endpoint's asynchronous insert queue under faults.

* Two batches of the queue (two keys: the same table, different settings) flushed at
  once, holding an insert with the same deduplication token each: both checked the
  table's recent ids before either had written its part, and both were written. A
  table's flushes now take turns, so the second finds the first's id.
* A flush copied the entries' columns from its temporary table into the target by the
  INSERT's own column list: an INSERT naming an EPHEMERAL column failed at the flush
  (nothing stores it to select). The target's stored columns are copied now, their
  defaults computed from what each insert sent.
* A SIGTERM writes what waits before the endpoint stops (and its
  ``system.asynchronous_insert_log`` rows, there after the restart); a SIGKILL loses
  it, as a server's crash does, and a client's retry of the unanswered insert lands once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from chclients import make_client, unique_name
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError
from waiting import wait_for

from chworkers import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)

LATER = {
    "async_insert": 1,
    "async_insert_use_adaptive_busy_timeout": 0,
    "async_insert_busy_timeout_max_ms": 60000,
    "wait_for_async_insert": 0,
}


def make_table(client: Client) -> str:
    name = unique_name("aqf")
    client.command(
        f"CREATE TABLE {name} (k UInt64) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    return name


def count(client: Client, table: str) -> int:
    return int(client.command(f"SELECT count() FROM {table}"))


def test_one_token_in_two_batches_flushed_at_once_is_written_once(ch_client: Client) -> None:
    table = make_table(ch_client)
    rows = b"".join(b'{"k":%d}\n' % k for k in range(20_000))  # parsing takes a while
    for round_ in range(3):
        token = f"t{round_}"
        for threads in (1, 2, 3, 4):  # four keys: their settings differ
            settings = {**LATER, "max_threads": threads, "insert_deduplication_token": token}
            ch_client.raw_insert(table, None, rows, settings=settings, fmt="JSONEachRow")
        ch_client.command(f"SYSTEM FLUSH ASYNC INSERT QUEUE {table}")
        assert count(ch_client, table) == 20_000 * (round_ + 1)


def test_defaults_materialized_and_ephemeral_columns_as_the_table_computes_them(
    ch_client: Client,
) -> None:
    table = unique_name("aqf")
    ch_client.command(
        f"CREATE TABLE {table} (k UInt64, raw String EPHEMERAL, n UInt64 DEFAULT length(raw), "
        "s String DEFAULT 'dflt', twice UInt64 MATERIALIZED k * 2, "
        "half ALIAS k / 2) ENGINE = MergeTree ORDER BY k"
    )
    settings = {"async_insert": 1, "async_insert_busy_timeout_max_ms": 50}
    ch_client.command(f"INSERT INTO {table} (k, raw) VALUES (4, 'abc')", settings=settings)
    ch_client.raw_insert(
        table, None, b'{"k":6,"s":"given"}\n', settings=settings, fmt="JSONEachRow"
    )
    rows = ch_client.query(f"SELECT k, n, s, twice, half FROM {table} ORDER BY k").result_rows
    assert rows == [(4, 3, "dflt", 8, 2.0), (6, 0, "given", 12, 3.0)]


def test_a_stop_flushes_and_a_crash_loses_the_queue(tmp_path: Path) -> None:
    with EmbeddedClickHouse(tmp_path / "data") as ch:
        client = make_client(ch)
        table = make_table(client)
        client.raw_insert(table, None, b'{"k":1}\n', settings=LATER, fmt="JSONEachRow")
        ch.stop()  # SIGTERM: the queue is written first
        ch.restart()
        client = make_client(ch)
        assert count(client, table) == 1
        # And its system.asynchronous_insert_log row, written at the stop, attached again.
        logged = client.command(
            f"SELECT status FROM system.asynchronous_insert_log WHERE table = '{table}'"
        )
        assert logged == "Ok"
        client.raw_insert(table, None, b'{"k":2}\n', settings=LATER, fmt="JSONEachRow")
        # A client waiting for its insert's flush when the endpoint dies gets no answer.
        waited = {**LATER, "wait_for_async_insert": 1, "insert_deduplication_token": "r"}
        body = b'{"k":3}\n'
        failed: list[BaseException] = []

        def wait_for_flush() -> None:
            try:
                make_client(ch).raw_insert(table, None, body, settings=waited, fmt="JSONEachRow")
            except OperationalError as exc:
                failed.append(exc)

        waiter = threading.Thread(target=wait_for_flush)
        waiter.start()
        wait_for(lambda: ch.stats()["async_inserts_total"] == 2, timeout=60)
        ch.kill()  # SIGKILL: what waited in memory is gone, as on a server
        waiter.join(60)
        assert failed
        ch.restart()
        client = make_client(ch)
        assert count(client, table) == 1
        # The waiting client's retry (same token) lands once.
        fast = {**waited, "async_insert_busy_timeout_max_ms": 50}
        client.raw_insert(table, None, body, settings=fast, fmt="JSONEachRow")
        client.raw_insert(table, None, body, settings=fast, fmt="JSONEachRow")
        assert count(client, table) == 2
