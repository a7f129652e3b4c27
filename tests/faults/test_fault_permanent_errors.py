"""A permanent error (an unknown table) is not retried hot: the batch stays spooled,
the dispatcher reports why, and SIGHUP retries it at once."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from waiting import wait_for

from chworkers.daemon import config
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(180)
def test_unknown_table_is_held_reported_and_retried_on_sighup(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    cfg = config.load(
        data={
            "state_dir": str(tmp_path / "state"),
            "metrics": {"port": 0},  # never the default 9363: it may be taken
            "clickhouse": {
                "url": f"{endpoint.url}/{database}",
                "pool": {"max_connections": 2, "retry": {"initial_backoff": 0.05}},
            },
            "supervisor": {"workers": 1},
            "spool": {"fsync": False, "retry_backoff_max": 0.5},
            "pipelines": [
                {"name": "p", "table": "missing", "source": "stdin", "max_delay": "50ms"}
            ],
        },
        env={},
    )
    reader, writer = os.pipe()
    stdin = open(reader, "rb")  # noqa: SIM115
    daemon = Daemon(cfg, stdin=stdin)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", daemon.run()))
    thread.start()
    try:
        assert daemon.wait_ready(60)
        os.write(writer, b'{"n":1}\n{"n":2}\n')
        wait_for(lambda: daemon.totals.failures >= 1, timeout=60)
        problems = daemon.dispatcher.problems()
        assert len(problems) == 1, problems
        assert "table missing: UNKNOWN_TABLE (60)" in problems[0]
        assert "1 batch held" in problems[0]
        # Not retried hot: with retry_backoff_max = 0.5 s an outage would be retried
        # about ten times in these 5 s; a permanent error waits permanent_error_backoff.
        time.sleep(5)
        assert daemon.totals.failures == 1
        assert daemon.spool.stats()["batches"] == 1
        # The operator creates the table and sends SIGHUP: the batch lands at once.
        ch_client.command(
            "CREATE TABLE missing (n UInt64) ENGINE = MergeTree ORDER BY n "
            "SETTINGS non_replicated_deduplication_window = 1000"
        )
        daemon._signals.put(signal.SIGHUP)
        # The rows are counted as ClickHouse confirms them, then the batch leaves the
        # spool and the held ones: the end is when the problem is gone (reading it right
        # after the count found it still listed, under load).
        wait_for(lambda: daemon.dispatcher.problems() == [], timeout=30, what="released")
        assert daemon.totals.rows_inserted == 2
        assert daemon.spool.stats()["batches"] == 0
    finally:
        os.close(writer)
        thread.join(60)
    assert result.get("code") == 0
    assert ch_client.query("SELECT count() FROM missing").result_rows[0][0] == 2


def test_only_the_retry_policys_fatal_errors_hold_a_batch(tmp_path: Path) -> None:
    from chworkers.errors import RetriesExhaustedError, ServerError, WorkerLostError
    from chworkers.workers.supervisor import Supervisor

    cfg = config.load(data={"state_dir": str(tmp_path / "state")}, env={})
    daemon = Daemon(cfg)
    daemon.supervisor = Supervisor("http://127.0.0.1:9/")  # its retry policy, not started
    assert daemon._is_permanent(ServerError("no table", code=60, name="UNKNOWN_TABLE"))
    assert daemon._is_permanent(ServerError("denied", code=516, name="AUTHENTICATION_FAILED"))
    assert not daemon._is_permanent(ServerError("parts", code=252, name="TOO_MANY_PARTS"))
    assert not daemon._is_permanent(RetriesExhaustedError("down", attempts=5))
    # A worker killed under the batch (OOM, an operator) says nothing about the batch.
    assert not daemon._is_permanent(WorkerLostError("killed", task_id=1, attempts=2))
