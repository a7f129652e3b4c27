"""The embedded engine killed between its deduplication log and its part (a drill found it).

A non-replicated MergeTree table writes an insert's block id to ``deduplication_logs/``
before it renames the part into place. The embedded child killed by SIGKILL in between
came back with the log entry but without the part, and the daemon's retry of that insert
(the same token: it never got an answer) was deduplicated away: 2,000 rows lost in
``test_fault_embedded_child``'s drill under load. The endpoint now drops such entries
before chDB opens the data directory. Here the crash is made exact: the part the log
names is removed while the engine is down, as the kill leaves it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from chworkers import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)


def client_for(ch: EmbeddedClickHouse) -> Client:
    return clickhouse_connect.get_client(host=ch.host, port=ch.port)


def test_a_retried_insert_whose_part_was_never_committed_lands(tmp_path: Path) -> None:
    with EmbeddedClickHouse(tmp_path / "data") as ch:
        client = client_for(ch)
        client.command(
            "CREATE TABLE t (n UInt32) ENGINE = MergeTree ORDER BY n "
            "SETTINGS non_replicated_deduplication_window = 100"
        )
        client.insert("t", [[1]], column_names=["n"], settings={"insert_deduplication_token": "a"})
        client.insert("t", [[2]], column_names=["n"], settings={"insert_deduplication_token": "b"})
        (table_dir,) = [
            d.parent for d in (tmp_path / "data" / "store").glob("*/*/deduplication_logs")
        ]
        ch.kill()
        # What a SIGKILL between the log write and the part's rename leaves behind.
        shutil.rmtree(table_dir / "all_2_2_0")
        ch.restart()
        client = client_for(ch)
        assert client.command("SELECT count() FROM t") == 1
        # The retry of the insert that never got its answer: it must land, once.
        client.insert("t", [[2]], column_names=["n"], settings={"insert_deduplication_token": "b"})
        client.insert("t", [[2]], column_names=["n"], settings={"insert_deduplication_token": "b"})
        client.insert("t", [[1]], column_names=["n"], settings={"insert_deduplication_token": "a"})
        assert client.query("SELECT n FROM t ORDER BY n").result_rows == [(1,), (2,)]
