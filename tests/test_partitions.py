"""A batch across more partitions than ``max_partitions_per_insert_block`` is split by
partition (chworkers/clickhouse/partitions.py), against the embedded engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from daemonthread import daemon_config

from chworkers import ConnectionPool
from chworkers.clickhouse.dedup import partition_token
from chworkers.clickhouse.inserts import SplitBudget, run_insert
from chworkers.clickhouse.partitions import (
    group_by_partition,
    is_too_many_partitions,
    one_block,
    partition_keys,
)
from chworkers.clickhouse.retry import RetryPolicy, Verdict
from chworkers.daemon import config
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ServerError


def test_groups_hold_whole_partitions_in_order_of_appearance() -> None:
    records = [b"a1", b"b1", b"c1", b"a2", b"d1", b"b2", b"e1"]
    keys = ["a", "b", "c", "a", "d", "b", "e"]
    assert group_by_partition(records, keys, 2) == [
        [b"a1", b"b1", b"a2", b"b2"],
        [b"c1", b"d1"],
        [b"e1"],
    ]
    assert group_by_partition(records, keys, 0) == [records]  # 0: no limit
    with pytest.raises(ValueError, match="7 records but 1"):
        group_by_partition(records, ["a"], 2)


def test_the_partitions_error_is_never_retried_but_too_many_parts_is() -> None:
    partitions = ServerError(
        "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 3). "
        "(TOO_MANY_PARTS)",
        code=252,
        name="TOO_MANY_PARTS",
    )
    parts = ServerError(
        "Code: 252. DB::Exception: Too many parts (300 with average size of 1 KiB) in table "
        "'db.t'. Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)",
        code=252,
        name="TOO_MANY_PARTS",
    )
    assert is_too_many_partitions(partitions) and not is_too_many_partitions(parts)
    policy = RetryPolicy()
    assert policy.classify(partitions, idempotent=True) is Verdict.FATAL
    assert policy.classify(parts, idempotent=True) is Verdict.RETRY


@pytest.fixture
def pool(endpoint: EmbeddedClickHouse, database: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(f"{endpoint.url}/{database}", {"max_connections": 1})
    try:
        yield pool
    finally:
        pool.close()


def _rows(n: int, partitions: int) -> list[bytes]:
    # Interleaved: halving by position would never get under the limit.
    return [b'{"k":%d,"day":%d,"s":"r%d"}\n' % (i, i % partitions, i) for i in range(n)]


def test_a_batch_across_many_partitions_is_split_by_partition(
    pool: ConnectionPool, ch_client: Client
) -> None:
    ch_client.command(
        "CREATE TABLE ev (k UInt64, day UInt8, s String) ENGINE = MergeTree "
        "PARTITION BY day ORDER BY k SETTINGS non_replicated_deduplication_window = 1000"
    )
    settings = {"max_partitions_per_insert_block": 4}
    sent: list[tuple[int, str]] = []

    def send(chunk: bytes, token: str) -> tuple[int, int]:
        sent.append((chunk.count(b"\n"), token))
        with pool.connection() as conn:
            summary = conn.raw_insert(
                "ev", chunk, fmt="JSONEachRow", settings=settings, deduplication_token=token
            )
            return int(summary.written_rows), int(summary.written_bytes())

    def partitions(data: bytes) -> tuple[list[str], int]:
        with pool.connection() as conn:
            return partition_keys(conn, "ev", "JSONEachRow", data, settings)

    payload = b"".join(_rows(1000, 10))
    result = run_insert(
        payload, "tok", send, fmt="JSONEachRow", budget=SplitBudget(), partitions=partitions
    )
    assert result.rows == 1000 and not result.rejected
    # The whole batch once (refused), then 10 partitions in groups of 4, 4 and 2.
    assert sent == [
        (1000, "tok"),
        (400, partition_token("tok", 0)),
        (400, partition_token("tok", 1)),
        (200, partition_token("tok", 2)),
    ]
    assert ch_client.command("SELECT count() FROM ev") == 1000
    assert ch_client.command("SELECT uniqExact(k) FROM ev") == 1000
    # A replay splits the same way: ClickHouse drops every group by its token.
    sent.clear()
    run_insert(payload, "tok", send, fmt="JSONEachRow", budget=SplitBudget(), partitions=partitions)
    assert [t for _, t in sent] == ["tok", *(partition_token("tok", i) for i in range(3))]
    assert ch_client.command("SELECT count() FROM ev") == 1000


@pytest.mark.parametrize("fmt", ["TSV", "JSONEachRow"])
def test_a_batch_that_may_be_split_is_written_as_one_block(
    pool: ConnectionPool, ch_client: Client, fmt: str
) -> None:
    """The tightest rows a line format has (a digit and its newline, the last one without
    it) still land as one block, with the caller's smaller block sizes raised and a
    larger one kept: refused, nothing of the batch would be in the table. Over a MiB, so
    that the endpoint streams the body into chDB, which writes block by block."""
    ch_client.command("CREATE TABLE blocks (n UInt16) ENGINE = MergeTree ORDER BY tuple()")
    ch_client.command("SYSTEM STOP MERGES blocks")
    rows = [b"1" if fmt == "TSV" else b"{}"] * 700_000
    body = b"\n".join(rows)  # the last row ends the body
    assert len(body) > 1 << 20
    small = {
        "max_insert_block_size": 100_000,
        "min_insert_block_size_rows": 100_000,
        "min_insert_block_size_bytes": 0,
    }
    settings = one_block(small, body)
    assert one_block({"max_insert_block_size": 10**9}, body)["max_insert_block_size"] == 10**9
    with pool.connection() as conn:
        conn.raw_insert("blocks", body, fmt=fmt, settings=settings, deduplication_token="b1")
        # Without them, the same rows under the caller's block sizes are many blocks.
        conn.raw_insert("blocks", body, fmt=fmt, settings=small, deduplication_token="b2")
    parts = ch_client.query(
        "SELECT rows FROM system.parts WHERE database = currentDatabase() AND table = 'blocks' "
        "AND active ORDER BY min_block_number"
    ).result_rows
    assert parts[0] == (700_000,)
    assert len(parts) > 2 and sum(r for (r,) in parts[1:]) == 700_000


def test_partition_keys_follow_the_table_and_its_format(
    pool: ConnectionPool, ch_client: Client, database: str
) -> None:
    ch_client.command(
        "CREATE TABLE logs (ts DateTime('UTC'), `user id` UInt32, msg String, "
        "m String MATERIALIZED msg) ENGINE = MergeTree "
        "PARTITION BY (toYYYYMMDD(ts), `user id` % 3) ORDER BY ts"
    )
    csv = b'ts,user id,msg\n2026-01-01 10:00:00,1,"a, b"\n2026-01-02 00:00:00,5,x\n'
    with pool.connection() as conn:
        keys, limit = partition_keys(conn, f"{database}.logs", "CSVWithNames", csv, None)
    assert keys == ["(20260101,1)", "(20260102,2)"]
    assert limit == 100  # the server's default
    ch_client.command("CREATE TABLE flat (n UInt8) ENGINE = MergeTree ORDER BY n")
    with pool.connection() as conn:
        assert partition_keys(conn, "flat", "JSONEachRow", b'{"n":1}\n', None)[0] == []


def test_the_daemon_splits_a_batch_across_many_partitions(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    rows = 3000
    (tmp_path / "in.json").write_bytes(b"".join(_rows(rows, 30)))
    data = daemon_config(
        tmp_path / "state",
        f"{endpoint.url}/{database}",
        {
            "source": "file",
            "paths": [str(tmp_path / "in.json")],
            "max_rows": 100_000,
            "create": "k UInt64, day UInt8, s String",
            "engine": "MergeTree PARTITION BY day ORDER BY k",
            "insert_settings": ["max_partitions_per_insert_block=8"],
        },
    )
    daemon = Daemon(config.load(data=data, env={}))
    assert daemon.run() == 0
    assert ch_client.query("SELECT count(), uniqExact(k) FROM ev").result_rows[0] == (rows, rows)
    assert daemon.totals.dead_letters == 0 and daemon.totals.rows_inserted == rows
    # One batch, four inserts of whole partitions (8 + 8 + 8 + 6): one part per partition.
    assert (
        ch_client.command(
            f"SELECT count() FROM system.parts WHERE database = '{database}' AND table = 'ev' "
            "AND active"
        )
        == 30
    )
    assert not (tmp_path / "state" / "dead-letter").exists() or not any(
        (tmp_path / "state" / "dead-letter").rglob("*.jsonl")
    )
