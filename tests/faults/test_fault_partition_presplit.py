"""A table that refused a batch for too many partitions gets its next batches split
before they are sent (issue 15 item 1), against the embedded engine.

Every batch of such a table used to be sent whole first, refused by ClickHouse (code
252, nothing written, the whole batch sent and parsed for nothing) and only then split
by partition. Now the worker remembers the table (and the limit) and groups its next
batches first, with the same groups and sub-tokens as after a refusal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from daemonthread import daemon_config

from chworkers import ConnectionPool
from chworkers.clickhouse.dedup import partition_token
from chworkers.clickhouse.inserts import SplitBudget, run_insert
from chworkers.clickhouse.partitions import is_too_many_partitions, partition_keys
from chworkers.clickhouse.presplit import Learning, SpanningTables
from chworkers.clickhouse.schema import Evolve, evolve
from chworkers.daemon import config
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ServerError

SETTINGS = {"max_partitions_per_insert_block": 4, "input_format_skip_unknown_fields": 0}


@pytest.fixture
def pool(endpoint: EmbeddedClickHouse, database: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(f"{endpoint.url}/{database}", {"max_connections": 1})
    try:
        yield pool
    finally:
        pool.close()


class Table:
    """Inserts into ``ev`` through run_insert, recording each request and its outcome."""

    def __init__(self, pool: ConnectionPool, tables: SpanningTables) -> None:
        self.pool = pool
        self.sent: list[tuple[int, str, str]] = []  # (rows, token, "ok" | "252" | other)
        self.splits: list[str] = []
        self.learning = Learning("ev/4", tables, self.splits.append)

    def send(self, chunk: bytes | memoryview, token: str) -> tuple[int, int]:
        rows = bytes(chunk).count(b"\n")
        try:
            with self.pool.connection() as conn:
                summary = conn.raw_insert(
                    "ev", chunk, fmt="JSONEachRow", settings=SETTINGS, deduplication_token=token
                )
        except ServerError as exc:
            self.sent.append((rows, token, "252" if is_too_many_partitions(exc) else "error"))
            raise
        self.sent.append((rows, token, "ok"))
        return int(summary.written_rows), int(summary.written_bytes())

    def partitions(self, data: bytes) -> tuple[list[str], int]:
        with self.pool.connection() as conn:
            return partition_keys(conn, "ev", "JSONEachRow", data, SETTINGS)

    def evolve(self, data: bytes) -> int:
        with self.pool.connection() as conn:
            return len(evolve(conn, "ev", data, Evolve()))

    def insert(self, payload: bytes, token: str, *, evolving: bool = False) -> int | None:
        self.sent.clear()
        self.splits.clear()
        result = run_insert(
            payload,
            token,
            self.send,
            fmt="JSONEachRow",
            budget=SplitBudget(),
            partitions=self.partitions,
            learning=self.learning,
            evolve=self.evolve if evolving else None,
        )
        assert not result.rejected
        return result.rows


def _batch(first: int, n: int, partitions: int) -> bytes:
    return b"".join(
        b'{"k":%d,"day":%d,"s":"r%d"}\n' % (i, i % partitions, i) for i in range(first, first + n)
    )


def _tokens(token: str, groups: int) -> list[str]:
    return [partition_token(token, i) for i in range(groups)]


@pytest.fixture
def ev(ch_client: Client) -> None:
    ch_client.command(
        "CREATE TABLE ev (k UInt64, day UInt8, s String) ENGINE = MergeTree "
        "PARTITION BY day ORDER BY k SETTINGS non_replicated_deduplication_window = 1000"
    )


def test_after_a_refusal_the_next_batch_is_split_before_it_is_sent(
    ev: None, pool: ConnectionPool, ch_client: Client
) -> None:
    table = Table(pool, SpanningTables())
    first, second = _batch(0, 500, 10), _batch(500, 500, 10)
    assert table.insert(first, "a") == 500
    assert [(t, o) for _, t, o in table.sent] == [
        ("a", "252"),
        *((t, "ok") for t in _tokens("a", 3)),
    ]
    assert table.splits == ["refused"]
    # The next batch: no 252, grouped first, the same sub-tokens a refusal makes.
    assert table.insert(second, "b") == 500
    assert table.sent == [(200, t, "ok") for t in _tokens("b", 2)] + [
        (100, partition_token("b", 2), "ok")
    ]
    assert table.splits == ["presplit"]
    # A batch that fits in one group is sent as it is, with its own token.
    assert table.insert(_batch(1000, 40, 3), "c") == 40
    assert table.sent == [(40, "c", "ok")] and table.splits == []
    assert ch_client.query("SELECT count(), uniqExact(k) FROM ev").result_rows[0] == (1040, 1040)


def test_a_batch_makes_the_same_sub_batches_whichever_path_it_took(
    ev: None, pool: ConnectionPool, ch_client: Client
) -> None:
    payload = _batch(0, 600, 12)
    whole = Table(pool, SpanningTables())  # never refused here: sent whole, then split
    whole.insert(payload, "tok")
    refused_path = [t for _, t, o in whole.sent if o == "ok"]
    assert refused_path == _tokens("tok", 3)
    learned = SpanningTables()
    learned.spanned("ev/4")
    replay = Table(pool, learned)  # a replay in a worker that knows the table spans
    replay.insert(payload, "tok")
    assert [t for _, t, _ in replay.sent] == refused_path
    assert [o for _, _, o in replay.sent] == ["ok"] * 3 and replay.splits == ["presplit"]
    # ClickHouse dropped every group of the replay by its token: nothing twice.
    assert ch_client.query("SELECT count(), uniqExact(k) FROM ev").result_rows[0] == (600, 600)


def test_a_learnt_table_still_evolves_and_bisects(
    ev: None, pool: ConnectionPool, ch_client: Client
) -> None:
    # The evaluation before sending reads the batch with the table's columns: a field the
    # table lacks yet, or a bad row, makes ClickHouse refuse it. The batch is then sent as
    # it is, so the insert's own error decides: the column is added, the bad row bisected
    # out (its error the insert's), as for a table not learnt.
    table = Table(pool, SpanningTables())
    table.learning.tables.spanned("ev/4")
    grown = b"".join(
        b'{"k":%d,"day":%d,"s":"r%d","extra":"x%d"}\n' % (i, i % 10, i, i) for i in range(100)
    )
    assert table.insert(grown, "g", evolving=True) == 100
    assert ch_client.command("SELECT countIf(extra != '') FROM ev") == 100
    bad = _batch(100, 50, 10) + b'{"k":"oops","day":1,"s":"bad"}\n' + _batch(150, 50, 10)
    result = run_insert(
        bad,
        "b",
        table.send,
        fmt="JSONEachRow",
        budget=SplitBudget(),
        partitions=table.partitions,
        learning=table.learning,
    )
    assert result.rows == 100 and [r.record for r in result.rejected] == [
        b'{"k":"oops","day":1,"s":"bad"}\n'
    ]
    assert ch_client.command("SELECT count() FROM ev") == 200


def test_the_table_is_forgotten_after_a_while_of_batches_that_fit() -> None:
    now = [0.0]
    tables = SpanningTables(forget_after=600, clock=lambda: now[0])
    assert not tables.spans("t")
    tables.spanned("t")
    now[0] = 300.0
    tables.fitted("t")
    assert tables.spans("t")  # fit for 5 minutes: still split first
    now[0] = 500.0
    tables.spanned("t")  # spanned again: the while starts over
    now[0] = 1000.0
    tables.fitted("t")
    assert tables.spans("t")
    now[0] = 1100.0
    tables.fitted("t")
    assert not tables.spans("t")  # 10 minutes of batches that fit: no evaluation any more
    assert tables.spans("other") is False


def test_the_daemon_counts_refused_and_presplit_batches(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    rows, batches = 3000, 6
    (tmp_path / "in.json").write_bytes(_batch(0, rows, 30))
    data = daemon_config(
        tmp_path / "state",
        f"{endpoint.url}/{database}",
        {
            "source": "file",
            "paths": [str(tmp_path / "in.json")],
            "max_rows": rows // batches,
            "create": "k UInt64, day UInt8, s String",
            "engine": "MergeTree PARTITION BY day ORDER BY k",
            "insert_settings": ["max_partitions_per_insert_block=8"],
        },
    )
    data["supervisor"] = {"workers": 1}  # one worker: it learns from the first batch
    daemon = Daemon(config.load(data=data, env={}))
    assert daemon.run() == 0
    assert ch_client.query("SELECT count(), uniqExact(k) FROM ev").result_rows[0] == (rows, rows)
    assert daemon.totals.dead_letters == 0

    def splits(how: str) -> float:
        value = daemon.supervisor.registry.get_sample_value(
            "chworkers_partition_splits_total", {"table": "ev", "how": how}
        )
        return value or 0.0

    # The first batch was refused; the next ones were split before they were sent.
    assert splits("presplit") > splits("refused") >= 1
