"""schema = "evolve": fields the table lacks become columns (chworkers/clickhouse/schema.py),
against the embedded engine."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from daemonthread import daemon_config

from chworkers import ConnectionPool
from chworkers.clickhouse.inserts import SplitBudget, run_insert
from chworkers.clickhouse.schema import Evolve, column_type, evolve, new_fields
from chworkers.daemon import config
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ConfigError


def test_new_fields_and_their_types() -> None:
    data = b'{"n":1,"a":1,"o":{"x":1}}\n{"n":2,"a":1,"b":"x"}\nnot json\n[1]\n'
    assert new_fields(data, {"n"}) == {"a": [1], "o": [{"x": 1}], "b": ["x"]}
    nullable, plain = Evolve(), Evolve(nullable=False)
    assert column_type("Int64", [1], nullable) == "Nullable(Int64)"
    assert column_type("Nullable(Bool)", [True], plain) == "Bool"
    assert column_type("Array(Int64)", [[1]], nullable) == "Array(Int64)"
    assert column_type("String", [{"x": 1}], nullable) == "JSON"


def test_evolve_needs_json_each_row() -> None:
    with pytest.raises(ConfigError, match="schema = 'evolve' works on JSONEachRow"):
        config.load(
            data={"pipelines": [{"name": "p", "table": "t", "format": "CSV", "schema": "evolve"}]},
            env={},
        )
    (p,) = config.load(
        data={"pipelines": [{"name": "p", "table": "t", "schema": "evolve"}]}, env={}
    ).pipelines
    assert p.settings["input_format_skip_unknown_fields"] == 0 and p.evolve == Evolve()
    (p,) = config.load(data={"pipelines": [{"name": "p", "table": "t"}]}, env={}).pipelines
    assert p.settings["input_format_skip_unknown_fields"] == 1 and p.evolve is None


@pytest.fixture
def pool(endpoint: EmbeddedClickHouse, database: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(f"{endpoint.url}/{database}", {"max_connections": 2})
    try:
        yield pool
    finally:
        pool.close()


def test_columns_are_added_with_inferred_types(pool: ConnectionPool, ch_client: Client) -> None:
    ch_client.command("CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n")
    records = [
        {"n": 1, "count": 3, "user id": "u1", "tags": ["a", "b"], "ctx": {"ip": "1.2.3.4"}},
        {"n": 2, "count": "many", "score": 1.5, "ok": True, "ts": "2026-12-01 10:00:00"},
        {"n": 3, "nothing": None},
    ]
    payload = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    settings = {"input_format_skip_unknown_fields": 0}

    def send(chunk: bytes, token: str) -> tuple[int, int]:
        with pool.connection() as conn:
            summary = conn.raw_insert(
                "ev", chunk, fmt="JSONEachRow", settings=settings, deduplication_token=token
            )
            return int(summary.written_rows), int(summary.written_bytes())

    def grow(data: bytes) -> int:
        with pool.connection() as conn:
            return len(evolve(conn, "ev", data, Evolve()))

    result = run_insert(payload, "t1", send, fmt="JSONEachRow", budget=SplitBudget(), evolve=grow)
    assert result.rows == 3 and not result.rejected
    types = dict(
        ch_client.query(
            "SELECT name, type FROM system.columns WHERE table = 'ev' "
            "AND database = currentDatabase()"
        ).result_rows
    )
    assert types == {
        "n": "UInt64",
        "count": "Nullable(String)",  # 3 and "many": widened by the inference
        "user id": "Nullable(String)",
        "tags": "Array(String)",
        "ctx": "JSON",
        "score": "Nullable(Float64)",
        "ok": "Nullable(Bool)",
        "ts": "Nullable(DateTime)",
        "nothing": "Nullable(String)",
    }
    rows = ch_client.query(
        "SELECT n, count, `user id`, tags, toString(ctx.ip), score, ok FROM ev ORDER BY n"
    ).result_rows
    assert rows[0][:5] == (1, "3", "u1", ["a", "b"], "1.2.3.4")
    assert rows[1][1] == "many" and rows[1][5] == 1.5 and rows[1][6] is True
    assert rows[2][1] is None


def test_two_daemons_racing_to_add_a_column(pool: ConnectionPool, ch_client: Client) -> None:
    ch_client.command("CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n")
    data = b'{"n":1,"extra":7}\n'
    errors: list[BaseException] = []
    added: list[list[str]] = []
    barrier = threading.Barrier(4)

    def add() -> None:
        try:
            barrier.wait()
            with pool.connection() as conn:
                added.append(evolve(conn, "ev", data, Evolve()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert (
        ch_client.command(
            "SELECT type FROM system.columns WHERE table = 'ev' AND name = 'extra' "
            "AND database = currentDatabase()"
        )
        == "Nullable(Int64)"
    )


@pytest.mark.timeout(180)
def test_two_daemons_evolve_one_table_and_lose_nothing(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    ch_client.command(
        "CREATE TABLE ev (n UInt64, s String) ENGINE = MergeTree ORDER BY n "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    per = 500
    daemons: list[Daemon] = []
    for d in range(2):
        lines = []
        for i in range(d * per, (d + 1) * per):
            record: dict[str, Any] = {"n": i, "s": f"r{i}", "shared": i}
            if i % 7 == 0:
                record[f"only_{d}"] = {"k": i}  # a nested object: a JSON column
            if i % 11 == 0:
                record["bad"] = [1, 2] if d == 0 else 5  # one daemon's type wins
            lines.append(json.dumps(record).encode() + b"\n")
        (tmp_path / f"in{d}.json").write_bytes(b"".join(lines))
        data = daemon_config(
            tmp_path / f"state{d}",
            f"{endpoint.url}/{database}",
            {"source": "file", "paths": [str(tmp_path / f"in{d}.json")], "max_rows": 100},
        )
        data["pipelines"][0].pop("create")
        data["pipelines"][0]["schema"] = "evolve"
        daemons.append(Daemon(config.load(data=data, env={})))
    codes: list[int] = []
    threads = [threading.Thread(target=lambda d=d: codes.append(d.run())) for d in daemons]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert codes == [0, 0]
    columns = dict(
        ch_client.query(
            "SELECT name, type FROM system.columns WHERE table = 'ev' "
            "AND database = currentDatabase()"
        ).result_rows
    )
    assert columns["shared"] == "Nullable(Int64)"
    assert columns["only_0"] == columns["only_1"] == "JSON"
    assert columns["bad"] in ("Array(Int64)", "Nullable(Int64)")
    dead = sum(d.totals.dead_letters for d in daemons)
    inserted = ch_client.query("SELECT count(), uniqExact(n) FROM ev").result_rows[0]
    # Every row is in the table or a dead letter (the records whose "bad" lost the race).
    assert inserted[0] == inserted[1] and inserted[0] + dead == 2 * per
    losers = sum(
        1 for i in range(2 * per) if i % 11 == 0 and (i < per) != (columns["bad"] == "Array(Int64)")
    )
    assert dead == losers


def test_conflicting_types_first_record_wins_rest_dead_lettered(
    pool: ConnectionPool, ch_client: Client
) -> None:
    ch_client.command("CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n")
    payload = b'{"n":1,"x":[1,2]}\n{"n":2,"x":5}\n{"n":3}\n{"n":4,"x":[3]}\n'

    def send(chunk: bytes, token: str) -> tuple[int, int]:
        with pool.connection() as conn:
            summary = conn.raw_insert(
                "ev",
                chunk,
                fmt="JSONEachRow",
                settings={"input_format_skip_unknown_fields": 0},
                deduplication_token=token,
            )
            return int(summary.written_rows), int(summary.written_bytes())

    def grow(data: bytes) -> int:
        with pool.connection() as conn:
            return len(evolve(conn, "ev", data, Evolve()))

    result = run_insert(payload, "t2", send, fmt="JSONEachRow", budget=SplitBudget(), evolve=grow)
    assert [r.record for r in result.rejected] == [b'{"n":2,"x":5}\n']
    assert ch_client.query("SELECT n, x FROM ev ORDER BY n").result_rows == [
        (1, [1, 2]),
        (3, []),
        (4, [3]),
    ]
