"""Without a token, a synchronous and an asynchronous insert of the same data are one.

ClickHouse 26.x names an insert without a token by its parsed block's data hash, the
same way for a synchronous insert and an asynchronous entry (``getBlockUnifiedHash`` in
``src/Interpreters/InsertDeduplication.cpp``: ``SipHash128`` of ``<lo>_<hi>`` of the
columns' values, column by column, then the root and block number), and keeps both in
one store. The endpoint hashed an asynchronous entry's bytes and format instead, so an
asynchronous insert repeating a synchronous one's data was written again. Now an entry
whose columns are all of fixed width is named as chDB names the synchronous insert (the
test compares with chDB's own log), and dropped if chDB's log of the table has it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from chclients import unique_name
from clickhouse_connect.driver.client import Client

from chworkers.embedded.asyncdedup import FILE_NAME

pytestmark = pytest.mark.timeout(120)

FAST = {
    "async_insert": 1,
    "async_insert_use_adaptive_busy_timeout": 0,
    "async_insert_busy_timeout_max_ms": 20,
    "wait_for_async_insert": 1,
}
COLUMNS = (
    "k UInt64, i Int32, b UInt8, f Float64, d Date, t DateTime, t3 DateTime64(3), "
    "m Decimal(18, 4), e Enum8('a' = 1, 'b' = 2), ok Bool, x Int16 DEFAULT 7"
)
BODY = (
    b'{"k":1,"i":-5,"b":200,"f":1.25,"d":"2026-12-02","t":"2026-12-02 10:00:00",'
    b'"t3":"2026-12-02 10:00:00.123","m":"12.3456","e":"b","ok":true}\n'
    b'{"k":2,"i":7,"b":0,"f":-0.5,"d":"1970-01-02","t":"2000-01-01 00:00:00",'
    b'"t3":"2000-01-01 00:00:00.000","m":"-1","e":"a","ok":false}\n'
)
SENT = ["k", "i", "b", "f", "d", "t", "t3", "m", "e", "ok"]


def make_table(client: Client) -> str:
    name = unique_name("sd")
    client.command(
        f"CREATE TABLE {name} ({COLUMNS}) ENGINE = MergeTree PARTITION BY k % 2 ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    return name


def table_dir(client: Client, table: str) -> Path:
    return Path(
        client.command(
            "SELECT data_paths[1] FROM system.tables WHERE database = currentDatabase() "
            f"AND name = '{table}'"
        )
    )


@pytest.mark.parametrize("columns", [SENT, None])
def test_an_asynchronous_insert_of_a_synchronous_insert_s_data_is_dropped(
    ch_client: Client, columns: list[str] | None
) -> None:
    table = make_table(ch_client)
    body = BODY if columns else BODY.replace(b"}\n", b',"x":7}\n')
    ch_client.raw_insert(table, columns, body, fmt="JSONEachRow")
    assert ch_client.command(f"SELECT count() FROM {table}") == 2
    summary = ch_client.raw_insert(table, columns, body, settings=FAST, fmt="JSONEachRow")
    assert int(summary.written_rows) == 0
    assert ch_client.command(f"SELECT count() FROM {table}") == 2
    # Other data still lands, once.
    other = body.replace(b'"k":1', b'"k":3')
    for expected in (2, 0):
        summary = ch_client.raw_insert(table, columns, other, settings=FAST, fmt="JSONEachRow")
        assert int(summary.written_rows) == expected
    assert ch_client.command(f"SELECT count() FROM {table}") == 4


def test_an_entry_s_id_is_the_one_chdb_logs_for_the_same_data(ch_client: Client) -> None:
    queued, written = make_table(ch_client), make_table(ch_client)
    ch_client.raw_insert(queued, SENT, BODY, settings=FAST, fmt="JSONEachRow")
    ch_client.raw_insert(written, SENT, BODY, fmt="JSONEachRow")
    ours = (table_dir(ch_client, queued) / FILE_NAME).read_text().split()
    logs = table_dir(ch_client, written) / "deduplication_logs"
    chdbs = {
        line.split("\t")[2].split("_", 1)[1]
        for path in logs.glob("*.txt")
        for line in path.read_text().splitlines()
    }
    assert len(chdbs) == 1  # one hash, its partitions' ids
    assert chdbs <= set(ours)


def test_in_one_flush_only_the_repeated_entries_are_dropped(
    ch_client: Client, client_factory: Any
) -> None:
    admin = ch_client
    table = make_table(admin)
    admin.raw_insert(table, SENT, BODY, fmt="JSONEachRow")  # synchronous: 2 rows
    new = BODY.replace(b'"k":1', b'"k":5').replace(b'"k":2', b'"k":6')
    bodies = [BODY, new, new, BODY.replace(b'"k":1', b'"k":9')]
    # One flush, of the four: it starts when the fourth arrives.
    slow = {
        **FAST,
        "async_insert_busy_timeout_max_ms": 60_000,
        "async_insert_max_query_number": len(bodies),
    }
    written: list[int] = [-1] * len(bodies)

    def send(n: int) -> None:
        summary = client_factory().raw_insert(
            table, SENT, bodies[n], settings=slow, fmt="JSONEachRow"
        )
        written[n] = int(summary.written_rows)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def flushes() -> int:
        admin.command("SYSTEM FLUSH LOGS")
        return int(
            admin.command(
                "SELECT uniqExact(flush_query_id) FROM system.asynchronous_insert_log "
                f"WHERE table = '{table}'"
            )
        )

    # The log's record of a flush may follow its clients' answers by a moment under load.
    deadline = time.monotonic() + 10
    while flushes() == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert flushes() == 1  # one flush: the repeats' rows left out of its staging table
    assert sorted(written) == [0, 0, 2, 2]  # the synchronous repeat, one of the two news
    assert written[0] == 0
    assert admin.command(f"SELECT count() FROM {table}") == 6
    keys = admin.query(f"SELECT k FROM {table} ORDER BY k").result_columns[0]
    assert keys == [1, 2, 2, 5, 6, 9]
