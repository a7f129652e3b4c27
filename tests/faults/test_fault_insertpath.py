"""One insert path: the daemon's batches are the supervisor's insert task, with the
bisection of rejected rows inside it, bounded, and counted once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from chworkers.daemon import config
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse


def daemon_config(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, **pipeline: Any
) -> Any:
    source = tmp_path / "in.data"
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "metrics": {"port": 0},  # never the default 9363: it may be taken
        "clickhouse": {
            "url": f"{endpoint.url}/{database}",
            "pool": {"max_connections": 2, "retry": {"initial_backoff": 0.05, "max_backoff": 0.5}},
        },
        "supervisor": pipeline.pop("supervisor", {"workers": 2}),
        "spool": {"fsync": False, "retry_backoff_max": 1.0},
        "pipelines": [
            {
                "name": "p",
                "table": "ev",
                "source": "file",
                "paths": [str(source)],
                "create": "n UInt64, s String",
                "engine": "MergeTree ORDER BY n "
                "SETTINGS non_replicated_deduplication_window = 1000",
                "max_delay": "100ms",
                **pipeline,
            }
        ],
    }
    return config.load(data=data, env={})


def sample(daemon: Daemon, name: str, **labels: str) -> float:
    value = daemon.supervisor.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted((tmp_path / "state" / "dead-letter").glob("*/*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def test_daemon_batches_are_insert_tasks_timed_and_counted_once(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    rows = 3000
    (tmp_path / "in.data").write_bytes(b"".join(b'{"n":%d,"s":"row"}\n' % i for i in range(rows)))
    daemon = Daemon(daemon_config(tmp_path, endpoint, database, max_rows=1000))
    assert daemon.run() == 0
    assert ch_client.query("SELECT count(), uniqExact(n) FROM ev").result_rows[0] == (rows, rows)
    batches = daemon.totals.batches
    assert batches >= 1
    # Counted as inserts (not as ``submit`` calls), each request timed.
    assert sample(daemon, "chworkers_tasks_total", kind="insert", outcome="success") == batches
    # Two submits: the table's DDL, and the look-up of its timestamp columns for the
    # dispatcher's epoch check (chworkers/daemon/epochcheck.py), once per table.
    assert sample(daemon, "chworkers_tasks_total", kind="submit", outcome="success") == 2
    assert sample(daemon, "chworkers_insert_duration_seconds_count", table="ev") == batches
    # Rows once, as ClickHouse wrote them; bytes as ClickHouse wrote them (not the
    # payload's size, which is what the daemon used to add on top).
    assert sample(daemon, "chworkers_rows_inserted_total", table="ev") == rows
    assert daemon.totals.rows_inserted == rows
    nbytes = sample(daemon, "chworkers_bytes_inserted_total", table="ev")
    payload = (tmp_path / "in.data").stat().st_size
    assert nbytes > 0 and nbytes != payload, (nbytes, payload)


@pytest.mark.timeout(240)
def test_a_batch_whose_rows_all_fail_reaches_the_dead_letters_without_a_hung_worker(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    # One new field under unknown_fields = "reject": every row fails. Unbounded, the
    # bisection cost 2n - 1 requests and no heartbeat, so the worker was killed as hung,
    # the batch retried forever, and no dead letter was ever written.
    rows = 4000
    (tmp_path / "in.data").write_bytes(
        b"".join(b'{"n":%d,"s":"row","new_field":1}\n' % i for i in range(rows))
    )
    cfg = daemon_config(
        tmp_path,
        endpoint,
        database,
        max_rows=rows,
        unknown_fields="reject",
        # A budget of 300 requests: still several times hung_timeout of bisecting (10 ms a
        # request would be fast for this endpoint), at a third of the default's cost.
        supervisor={
            "workers": 1,
            "hung_timeout": 2.0,
            "max_task_crashes": 1,
            "split_max_requests": 300,
        },
    )
    daemon = Daemon(cfg)
    assert daemon.run() == 0
    letters = dead_letters(tmp_path)
    assert len(letters) == rows
    assert sorted(json.loads(e["record"])["n"] for e in letters) == list(range(rows))
    assert {e["error"]["code"] for e in letters} == {117}
    # The budget (300 requests) ran out: most records were not isolated.
    reasons = {e["reason"] for e in letters}
    assert reasons == {"rejected", "budget"}
    assert daemon.supervisor.stats().restarts.get("hung", 0) == 0
    assert sample(daemon, "chworkers_worker_restarts_total", reason="hung") == 0
    assert daemon.spool.stats()["batches"] == 0
    assert ch_client.query("SELECT count() FROM ev").result_rows[0][0] == 0
    assert sample(daemon, "chworkers_dead_letter_rows_total", table="ev") == rows
