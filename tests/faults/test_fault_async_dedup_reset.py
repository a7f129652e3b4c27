"""``TRUNCATE ALL TABLES FROM db`` frees the asynchronous entries' tokens of its tables.

The embedded endpoint keeps the block ids of asynchronous inserts itself, beside chDB's
own log of synchronous ones, and forgot them at ``TRUNCATE TABLE t`` only. After
``TRUNCATE ALL TABLES FROM db`` chDB's own log was empty (a synchronous insert with an
earlier token landed again, as in ClickHouse) while an asynchronous entry repeating an
earlier token was still dropped: answered as written, and its rows were not there.
"""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client
from test_embedded_async_dedup import async_insert, count, make_table

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    "statement", ["TRUNCATE ALL TABLES FROM {db}", "TRUNCATE TABLES FROM IF EXISTS `{db}`"]
)
def test_a_truncated_database_s_tables_take_new_entries_again(
    ch_client: Client, statement: str
) -> None:
    db = ch_client.command("SELECT currentDatabase()")
    emptied, kept = make_table(ch_client), make_table(ch_client)
    for table in (emptied, kept):
        assert async_insert(ch_client, table, 1, "t1") == 1
        ch_client.insert(table, [[2]], settings={"insert_deduplication_token": "s1"})
    pattern = statement.format(db=db) + f" LIKE '{emptied}'"
    ch_client.command(pattern)
    assert (count(ch_client, emptied), count(ch_client, kept)) == (0, 2)
    for table in (emptied, kept):
        ch_client.insert(table, [[2]], settings={"insert_deduplication_token": "s1"})
        async_insert(ch_client, table, 1, "t1")
    # As chDB's own log: the emptied table takes both tokens again, the other neither.
    assert (count(ch_client, emptied), count(ch_client, kept)) == (2, 2)
