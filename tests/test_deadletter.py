from __future__ import annotations

import json
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from prometheus_client import CollectorRegistry

from chworkers import ConnectionPool
from chworkers.clickhouse.inserts import Rejected, SplitBudget, is_row_error, run_insert
from chworkers.daemon.deadletter import DeadLetters
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ConnectError, ServerError
from chworkers.ops.metrics import Metrics


def test_row_errors_are_data_errors_only() -> None:
    assert is_row_error(ServerError("bad number", code=72, name="CANNOT_PARSE_NUMBER"))
    assert is_row_error(ServerError("unknown field", code=117, name="INCORRECT_DATA"))
    assert not is_row_error(ServerError("no table", code=60, name="UNKNOWN_TABLE"))
    assert not is_row_error(ServerError("too many parts", code=252, name="TOO_MANY_PARTS"))
    assert not is_row_error(ConnectError("refused"))


def test_dead_letters_are_json_lines_with_reason(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    letters = DeadLetters(tmp_path, metrics=Metrics(registry))
    err = ServerError(
        "Code: 72. DB::Exception: Cannot parse number (CANNOT_PARSE_NUMBER)",
        code=72,
        name="CANNOT_PARSE_NUMBER",
    )
    path = letters.write(
        "db.events",
        [Rejected(b'{"n":"x"}\n', err), Rejected(b'{"n":"\xff"}\n', err)],
        pipeline="p",
        batch="tok",
    )
    assert path is not None and path.parent == tmp_path / "db.events"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["record"] for e in entries] == ['{"n":"x"}', '{"n":"\\xff"}']
    assert entries[0]["error"] == {
        "code": 72,
        "name": "CANNOT_PARSE_NUMBER",
        "message": err.message,
    }
    assert entries[0]["pipeline"] == "p" and entries[0]["batch"] == "tok"
    assert (
        registry.get_sample_value("chworkers_dead_letter_rows_total", {"table": "db.events"}) == 2
    )
    assert letters.write("db.events", []) is None


def test_split_inserts_good_rows_and_isolates_bad_ones_for_real(
    endpoint: EmbeddedClickHouse, ch_client: Client, database: str
) -> None:
    ch_client.command(
        "CREATE TABLE ev (n UInt64, s String) ENGINE = MergeTree ORDER BY n "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    lines = [b'{"n":%d,"s":"ok"}\n' % i for i in range(200)]
    bad = {17: b'{"n":"seventeen","s":"x"}\n', 120: b'{"n":1,"s":"x"\n', 121: b"[1,2]\n"}
    for index, line in bad.items():
        lines[index] = line
    payload = b"".join(lines)
    pool = ConnectionPool(f"{endpoint.url}/{database}", {"max_connections": 1})

    def insert(chunk: bytes, token: str) -> tuple[int, int]:
        with pool.connection() as conn:
            summary = conn.raw_insert("ev", chunk, fmt="JSONEachRow", deduplication_token=token)
            return int(summary.written_rows), int(summary.written_bytes())

    budget = SplitBudget()
    try:
        first = run_insert(payload, "batch-1", insert, fmt="JSONEachRow", budget=budget)
        assert first.rows == 197
        assert sorted(r.record for r in first.rejected) == sorted(bad.values())
        assert all(is_row_error(r.error) and r.error.code for r in first.rejected)
        # A replay (after a crash) makes the same sub-batches; ClickHouse drops them all.
        again = run_insert(payload, "batch-1", insert, fmt="JSONEachRow", budget=budget)
        assert again.requests == first.requests
        count, total = ch_client.query("SELECT count(), sum(n) FROM ev").result_rows[0]
        assert count == 197
        assert total == sum(range(200)) - 17 - 120 - 121
    finally:
        pool.close()


def test_non_row_errors_propagate_without_splitting(
    endpoint: EmbeddedClickHouse, database: str
) -> None:
    pool = ConnectionPool(f"{endpoint.url}/{database}", {"max_connections": 1})
    calls: list[str] = []

    def insert(chunk: bytes, token: str) -> tuple[int, int]:
        calls.append(token)
        with pool.connection() as conn:
            conn.raw_insert("missing", chunk, fmt="JSONEachRow", deduplication_token=token)
        return 1, 1

    try:
        with pytest.raises(ServerError) as info:
            run_insert(b'{"n":1}\n{"n":2}\n', "b", insert, fmt="JSONEachRow", budget=SplitBudget())
        assert info.value.code == 60
        assert calls == ["b"]
    finally:
        pool.close()


def test_dead_letters_as_supervisor_middleware_keep_failed_tasks_rows(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    from chworkers import DeadLetters as PublicDeadLetters
    from chworkers import Supervisor

    assert PublicDeadLetters is DeadLetters  # one DeadLetters, for the daemon and the API
    registry = CollectorRegistry()
    letters = DeadLetters(tmp_path, metrics=Metrics(registry))
    with Supervisor(
        f"{endpoint.url}/{database}", workers=1, middleware=[letters], native_encoding=False
    ) as sup:
        with pytest.raises(ServerError):
            sup.insert("missing", [(1, "a"), (2, "b")], ["n", "s"]).result(60)
        with pytest.raises(ServerError):
            sup.insert_raw("gone", b'{"n":1}\n{"n":2}\n{"n":3}\n', "JSONEachRow").result(60)
        sup.drain(30)
    # Stopping the supervisor wrote what the middleware had queued.
    rows = [json.loads(line) for line in (tmp_path / "missing").glob("*.jsonl").__next__().open()]
    assert [json.loads(r["record"]) for r in rows] == [[1, "a"], [2, "b"]]
    assert {r["error"]["code"] for r in rows} == {60} and {r["reason"] for r in rows} == {"error"}
    raw = [json.loads(line) for line in (tmp_path / "gone").glob("*.jsonl").__next__().open()]
    assert [r["record"] for r in raw] == ['{"n":1}', '{"n":2}', '{"n":3}']
    count = registry.get_sample_value
    assert count("chworkers_dead_letter_rows_total", {"table": "missing"}) == 2
    assert count("chworkers_dead_letter_rows_total", {"table": "gone"}) == 3


def test_insert_raw_splits_bad_rows_in_the_worker_and_returns_them(
    endpoint: EmbeddedClickHouse, ch_client: Client, database: str
) -> None:
    from chworkers import BatchError, InsertResult, Supervisor

    ch_client.command(
        "CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    body = b"n\n1\n2\nx\n4\n"
    with Supervisor(f"{endpoint.url}/{database}", workers=1, split_max_requests=50) as sup:
        result = sup.insert_raw("ev", body, "CSVWithNames", split_bad_rows=True).result(60)
        with pytest.raises(BatchError, match="line formats"):
            sup.insert_raw("ev", b"", "Native", split_bad_rows=True)
        assert sup.insert_raw("ev", b"5\n", "CSV").result(60) == 1  # plain: the row count
    assert isinstance(result, InsertResult)
    assert result.rows == 3 and result.requests > 1
    assert [(r.record, r.reason, r.error.code) for r in result.rejected] == [
        (b"x\n", "rejected", result.rejected[0].error.code)
    ]
    assert is_row_error(result.rejected[0].error)
    assert ch_client.query("SELECT groupArray(n) FROM (SELECT n FROM ev ORDER BY n)").result_rows[
        0
    ][0] == [1, 2, 4, 5]
