"""chworkers.daemon.tables: tables created in the background against a real endpoint (through
the fault proxy, down at first), batches held until then and released in spool order."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import waiting
from clickhouse_connect.driver.client import Client
from faultproxy import FaultProxy

from chworkers import ConnectionPool
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch
from chworkers.daemon.tables import Tables


@pytest.mark.timeout(120)
def test_batches_wait_for_their_table_and_go_in_spool_order(
    tmp_path: Path, fault_proxy: FaultProxy, database: str, ch_client: Client
) -> None:
    pool = ConnectionPool(
        f"{fault_proxy.url}/{database}",
        {"min_connections": 0, "max_connections": 1, "retry": {"max_attempts": 1}},
    )
    executor = ThreadPoolExecutor(1)
    released: list[SpooledBatch] = []

    def create(statement: str) -> Future[Any]:
        return executor.submit(pool.with_connection, lambda c: c.command(statement))

    tables = Tables(
        {"ev": "CREATE TABLE IF NOT EXISTS ev (n UInt64) ENGINE = MergeTree ORDER BY n"},
        create,
        released.append,
        initial_backoff=60.0,  # long: retry_now() (SIGHUP) must cut it short
        max_backoff=60.0,
    )
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    try:
        fault_proxy.set("refuse")
        tables.start()
        held = [spool.put("ev", b'{"n":%d}\n' % i, format="JSONEachRow", rows=1) for i in range(3)]
        other = spool.put("elsewhere", b'{"n":9}\n', format="JSONEachRow", rows=1)
        for batch in [*held, other]:
            tables.offer(batch)
        assert released == [other]  # no CREATE for that table: never held
        waiting.wait_for(lambda: bool(tables.problems()), timeout=30)
        (problem,) = tables.problems()
        assert (
            problem.startswith("table ev is not created yet (") and "3 batches waiting" in problem
        )
        assert tables.held() == 3 and tables.pending() == ["ev"] and not tables.wait(0.1)
        fault_proxy.set("pass")
        tables.retry_now()
        assert tables.wait(20)
        assert [b.seq for b in released] == [other.seq] + [b.seq for b in held]
        assert tables.held() == 0 and tables.problems() == []
        later = spool.put("ev", b'{"n":5}\n', format="JSONEachRow", rows=1)
        tables.offer(later)
        assert released[-1] is later
        assert ch_client.command("EXISTS TABLE ev") == 1
    finally:
        tables.stop()
        executor.shutdown()
        pool.close()
        spool.close()
