"""A long ClickHouse outage must not wedge the client side (issue 9, defect 1).

The host cooldown used to be ``cooldown * 2 ** (failures - 1)`` computed before the cap:
at the 1,025th consecutive failure that raised OverflowError, the pool's slot reserved
for the failed connect was never given back, and once ``max_connections`` slots had
leaked nothing could be inserted again until a restart. Here the outage is a real one
(the fault proxy refuses every connection) and the failures come quickly (a tiny
cooldown), so that 1,100 of them take seconds instead of the minutes they take in the
field.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import waiting
from clickhouse_connect.driver.client import Client
from faultproxy import FaultProxy

from chworkers import ConnectionPool
from chworkers.backoff import capped_backoff
from chworkers.clickhouse.dsn import Host
from chworkers.clickhouse.hosts import HostSelector
from chworkers.clickhouse.pooloptions import PoolOptions
from chworkers.daemon.dispatch import Dispatcher
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch
from chworkers.errors import ConnectError
from chworkers.settings import unbounded

FAILURES = 1_100  # past 1,025, where 2.0 * 2 ** 1024 overflows a float


def test_cooldown_arithmetic_cannot_overflow_for_any_failure_count() -> None:
    assert capped_backoff(2.0, 1, 60.0) == 2.0
    assert capped_backoff(2.0, 3, 60.0) == 8.0
    for n in (1_024, 1_025, 1_026, 10**6, 10**18):
        assert capped_backoff(2.0, n, 60.0) == 60.0
    assert capped_backoff(1e-300, 10**9, 5.0) == 5.0  # no huge integer either
    assert capped_backoff(0.0, 10**9, 5.0) == 0.0
    host = Host("127.0.0.1", 1)
    hosts = HostSelector(
        [host], PoolOptions(host_cooldown=2.0, max_host_cooldown=60.0), clock=lambda: 0.0
    )
    for _ in range(FAILURES):
        hosts.report_failure(host, ConnectionError("refused"))
    (snap,) = hosts.snapshot()
    assert snap["failures"] == FAILURES and snap["down_for"] == 60.0


@pytest.mark.timeout(240)
def test_1100_refused_connects_then_inserts_succeed_again(
    fault_proxy: FaultProxy, database: str, ch_client: Client
) -> None:
    ch_client.command("CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n")
    pool = ConnectionPool(
        f"{fault_proxy.url}/{database}",
        {
            "min_connections": 0,
            "max_connections": 2,
            "acquire_timeout": 5.0,
            "host_cooldown": 0.0001,
            "max_host_cooldown": 0.001,
            "retry": {"max_attempts": 1},
        },
    )
    try:
        fault_proxy.set("refuse")
        for _ in range(FAILURES):
            with pytest.raises(ConnectError):
                pool.get_connection()
        stats = pool.stats()
        assert stats.opening == 0 and stats.in_use == 0, stats
        assert stats.hosts[0]["failures"] >= FAILURES  # (the housekeeper re-probes too)
        fault_proxy.set("pass")
        for start in range(0, 10_000, 1_000):
            rows = [[n] for n in range(start, start + 1_000)]
            pool.with_connection(lambda c, rows=rows: c.insert("ev", rows, column_names=["n"]))
        assert ch_client.query("SELECT count(), uniqExact(n) FROM ev").result_rows == [
            (10_000, 10_000)
        ]
        assert pool.stats().hosts[0]["failures"] == 0
    finally:
        pool.close()


class Interrupted(BaseException):
    """What a signal handler raises (like KeyboardInterrupt): not an Exception."""


def test_an_interrupt_while_connecting_gives_the_reserved_slot_back(
    fault_proxy: FaultProxy, database: str
) -> None:
    pool = ConnectionPool(
        f"{fault_proxy.url}/{database}",
        {"min_connections": 0, "max_connections": 1, "acquire_timeout": 3.0},
    )

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        fault_proxy.set("delay", delay=10.0)  # the connect's first request hangs
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(Interrupted):
            pool.get_connection()
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert pool.stats().opening == 0
        fault_proxy.set("pass")
        assert pool.with_connection(lambda c: c.query("SELECT 1").result_rows) == [(1,)]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        pool.close()


@pytest.mark.timeout(240)
def test_a_batch_failing_1100_times_is_still_retried_and_lands_once(
    fault_proxy: FaultProxy, database: str, ch_client: Client, tmp_path: Path
) -> None:
    """The dispatcher's per-batch backoff had the same overflow: at the 1,025th failure
    of one batch its retry was never scheduled and the batch sat in the spool until a
    restart."""
    ch_client.command("CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n")
    pool = ConnectionPool(
        f"{fault_proxy.url}/{database}",
        {
            "min_connections": 0,
            "max_connections": 1,
            "host_cooldown": 0.0001,
            "max_host_cooldown": 0.001,
            "retry": {"max_attempts": 1},
        },
    )
    executor = ThreadPoolExecutor(1)

    def insert(batch: SpooledBatch) -> int:
        return int(
            pool.with_connection(
                lambda c: (
                    c.raw_insert(
                        batch.table,
                        batch.payload,
                        fmt=batch.format,
                        deduplication_token=batch.token,
                    ).written_rows
                )
            )
        )

    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    failures: list[BaseException] = []
    dispatcher = Dispatcher(
        spool,
        lambda batch: executor.submit(insert, batch),
        # A backoff far below the declared minimum: a thousand refused inserts in seconds.
        unbounded(SpoolSettings(), retry_backoff_max=0.0005),
        on_failure=lambda batch, error: failures.append(error),
        initial_backoff=0.0001,
    )
    try:
        fault_proxy.set("refuse")
        dispatcher.start()
        body = b"".join(b'{"n":%d}\n' % n for n in range(1_000))
        dispatcher.add(spool.put("ev", body, format="JSONEachRow", rows=1_000))
        waiting.wait_for(lambda: len(failures) >= FAILURES, timeout=180, interval=0.05)
        fault_proxy.set("pass")
        assert dispatcher.wait_idle(60)
        assert dispatcher.confirmed == 1 and spool.stats()["batches"] == 0
        assert ch_client.query("SELECT count(), uniqExact(n) FROM ev").result_rows == [
            (1_000, 1_000)
        ]
    finally:
        dispatcher.stop()
        executor.shutdown()
        pool.close()
        spool.close()
