"""ConnectionPools in several processes: one lease broker's capacity shared (never more
connections than it lends), a SIGKILLed process's lease reclaimed, a pool carried
across fork rebuilt in the child."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import multiprocess
import pytest

from chworkers import ConnectionPool, EmbeddedClickHouse, LeaseBroker, LeaseClient
from chworkers.errors import PoolTimeoutError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def url(endpoint: EmbeddedClickHouse, database: str) -> str:
    return f"{endpoint.url}/{database}"


def _hold_pooled_connection(url: str, lease: LeaseClient, ready: Any) -> None:
    pool = ConnectionPool(url, {"min_connections": 0, "max_connections": 4}, lease=lease)
    pool.get_connection()
    ready.set()
    time.sleep(60)


def _lease_hammer(url: str, lease: LeaseClient, active: Any, peak: Any) -> None:
    pool = ConnectionPool(
        url, {"min_connections": 0, "max_connections": 4, "acquire_timeout": 30}, lease=lease
    )

    def loop() -> None:
        for _ in range(30):
            with pool.connection() as conn:
                with active.get_lock():
                    active.value += 1
                    peak.value = max(peak.value, active.value)
                conn.command("SELECT 1")
                with active.get_lock():
                    active.value -= 1

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.close()


def test_pools_in_several_processes_share_the_leased_capacity(url: str) -> None:
    ctx = multiprocess.get_context("fork")
    broker = LeaseBroker(2, context=ctx)
    broker.start()
    active, peak = ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [
        ctx.Process(target=_lease_hammer, args=(url, broker.client(f"w{i}"), active, peak))
        for i in range(3)
    ]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert peak.value == 2  # 3 processes x 4 threads x local max 4, never above 2
        assert broker.stats().granted_total == 3 * 4 * 30
    finally:
        broker.close()


def test_lease_of_a_sigkilled_pool_process_is_reclaimed(url: str) -> None:
    ctx = multiprocess.get_context("spawn")
    broker = LeaseBroker(1, context=ctx)
    broker.start()
    ready = ctx.Event()
    p = ctx.Process(target=_hold_pooled_connection, args=(url, broker.client("doomed"), ready))
    p.start()
    try:
        assert ready.wait(30)
        pool = ConnectionPool(
            url, {"min_connections": 0, "max_connections": 1}, lease=broker.client("main")
        )
        with pytest.raises(PoolTimeoutError):
            pool.get_connection(timeout=0.1)
        assert p.pid is not None
        os.kill(p.pid, signal.SIGKILL)
        with pool.connection(timeout=5) as conn:  # the dead holder's lease came back
            assert conn.command("SELECT 1") == 1
        assert broker.stats().reclaimed_total == 1
        pool.close()
    finally:
        p.kill()
        p.join()
        broker.close()


def _use_after_fork(pool: ConnectionPool, parent_ids: list[int], out: Any) -> None:
    value = pool.with_connection(lambda c: (c.command("SELECT 41 + 1"), c.id, c._pid))
    stats = pool.stats()
    out.put((value, stats.created, os.getpid(), parent_ids))


def test_pool_used_after_fork_rebuilds_itself(url: str) -> None:
    ctx = multiprocess.get_context("fork")
    pool = ConnectionPool(url, {"min_connections": 2, "max_connections": 2})
    parent_ids = [c.id for c in pool._state.idle]
    out = ctx.Queue()
    p = ctx.Process(target=_use_after_fork, args=(pool, parent_ids, out))
    p.start()
    (answer, conn_id, conn_pid), created, child_pid, _ = out.get(timeout=30)
    p.join(10)
    assert answer == 42 and conn_pid == child_pid
    assert conn_id not in parent_ids  # a new connection, not the parent's socket
    assert created == 2  # the child filled its own minimum
    # The parent's connections were not disturbed by the child.
    for _ in range(4):
        assert pool.with_connection(lambda c: c.command("SELECT 1")) == 1
    assert pool.stats().created == 2
    pool.close()
