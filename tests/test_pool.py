"""ConnectionPool: the seed API, limits, fairness, recycling, faults, leases, fork."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import multiprocess
import pytest
from faultproxy import FaultProxy
from prometheus_client import CollectorRegistry
from waiting import wait_for

from chworkers import (
    Connection,
    ConnectionPool,
    EmbeddedClickHouse,
    LeaseBroker,
    LeaseClient,
    MetricsHooks,
    PoolOptions,
)
from chworkers.errors import (
    ConfigError,
    ConnectError,
    PoolClosedError,
    PoolError,
    PoolTimeoutError,
    ResponseTimeoutError,
    RetriesExhaustedError,
    ServerError,
)
from chworkers.ops.metrics import Metrics

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def refused_url() -> str:
    """A loopback port nobody listens on: connecting is refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def broker() -> Iterator[LeaseBroker]:
    b = LeaseBroker(2)
    b.start()
    yield b
    b.close()


def test_options_from_mapping_and_clear_errors() -> None:
    opts = PoolOptions.coerce(
        {"min_connections": 0, "max_connections": 3, "retry": {"max_attempts": 2}}
    )
    assert opts.max_connections == 3 and opts.retry.max_attempts == 2
    with pytest.raises(ConfigError, match="min_connections"):
        PoolOptions(min_connections=5, max_connections=2)
    with pytest.raises(ConfigError, match="unknown"):
        PoolOptions.coerce({"max_conections": 3})
    with pytest.raises(ConfigError, match="idle_timeout"):
        PoolOptions(idle_timeout=0)


def test_unreachable_server_fails_fast_and_returns_the_lease(
    refused_url: str, broker: LeaseBroker
) -> None:
    pool = ConnectionPool(
        refused_url,
        {
            "min_connections": 0,
            "max_connections": 2,
            "retry": {"max_attempts": 3, "initial_backoff": 0.01},
        },
        lease=broker.client("w1"),
    )
    try:
        with pytest.raises(ConnectError) as info:
            pool.get_connection()
        assert info.value.sent is False
        with pytest.raises(RetriesExhaustedError) as exhausted:
            pool.with_connection(lambda conn: conn.query("SELECT 1"))
        assert exhausted.value.attempts == 3
        assert isinstance(exhausted.value.last_error, ConnectError)
        stats = pool.stats()
        assert stats.retries == {"transport": 2}
        assert stats.lease_held == 0
        deadline = time.monotonic() + 5
        while broker.stats().in_use and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broker.stats().in_use == 0  # every failed acquire gave its lease back
        assert broker.stats().granted_total == 4
    finally:
        pool.close()
    with pytest.raises(PoolClosedError):
        pool.get_connection()


# -- against the embedded endpoint ------------------------------------------------------------


@pytest.fixture
def url(endpoint: EmbeddedClickHouse, database: str) -> str:
    return f"{endpoint.url}/{database}"


def test_seed_api(url: str) -> None:
    pool = ConnectionPool(url, {"min_connections": 1, "max_connections": 4})
    assert pool.stats().created == 1 and pool.stats().idle == 1  # the minimum opens at start
    conn = pool.get_connection()
    assert conn.query("SELECT 1").result_rows == [(1,)]
    assert "1 in use, 0 idle, 0 waiting, max 4" in repr(pool)
    pool.release_connection(conn)
    with pytest.raises(PoolError, match="released twice"):
        pool.release_connection(conn)
    assert pool.with_connection(lambda c: c.command("SELECT 2")) == 2
    with pool.connection() as c2:
        assert c2 is conn  # the idle connection is reused
    stats = pool.stats()
    assert (stats.in_use, stats.idle, stats.created, stats.acquired) == (0, 1, 1, 3)
    pool.close()
    assert "closed" in repr(pool)
    with pytest.raises(PoolClosedError):
        pool.with_connection(lambda c: c.command("SELECT 1"))


def test_exhaustion_then_timeout(url: str) -> None:
    pool = ConnectionPool(url, {"min_connections": 0, "max_connections": 2, "acquire_timeout": 0.2})
    held = [pool.get_connection(), pool.get_connection()]
    start = time.monotonic()
    with pytest.raises(PoolTimeoutError, match=r"no connection within 0\.2 s"):
        pool.get_connection()
    assert 0.15 < time.monotonic() - start < 1.5
    assert pool.stats().timeouts == 1 and pool.stats().created == 2
    pool.release_connection(held.pop())
    assert pool.get_connection(timeout=0.1) is not None
    pool.close(timeout=0.1)


def test_timeout_none_waits_past_acquire_timeout(url: str) -> None:
    # None is "no limit" (as everywhere in chworkers), not the acquire_timeout setting.
    pool = ConnectionPool(url, {"min_connections": 0, "max_connections": 1, "acquire_timeout": 0.1})
    held = pool.get_connection()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.get_connection(timeout=None)))
    waiter.start()
    waiter.join(0.6)  # six acquire_timeouts
    assert waiter.is_alive() and not got
    pool.release_connection(held)
    waiter.join(10)
    assert got and not waiter.is_alive()
    pool.release_connection(got[0])  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        pool.get_connection(timeout=-1)
    pool.close(timeout=None)


def test_waiters_are_served_in_fifo_order(url: str) -> None:
    pool = ConnectionPool(url, {"min_connections": 1, "max_connections": 1})
    first = pool.get_connection()
    order: list[int] = []

    def waiter(i: int) -> None:
        with pool.connection(timeout=10):
            order.append(i)
            time.sleep(0.002)

    threads = []
    for i in range(6):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        wait_for(lambda i=i: pool.stats().waiting == i + 1)
    pool.release_connection(first)
    for t in threads:
        t.join(10)
    assert order == list(range(6))
    pool.close()


@pytest.mark.timeout(120)
def test_64_threads_x_1000_never_over_allocate(url: str) -> None:
    pool = ConnectionPool(url, {"min_connections": 4, "max_connections": 4, "acquire_timeout": 30})
    lock = threading.Lock()
    active = peak = 0
    per_thread = [0] * 64
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        nonlocal active, peak
        try:
            for _ in range(1000):
                conn = pool.get_connection()
                with lock:
                    active += 1
                    peak = max(peak, active)
                with lock:
                    active -= 1
                pool.release_connection(conn)
                per_thread[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert errors == []
    assert per_thread == [1000] * 64
    assert 1 <= peak <= 4
    stats = pool.stats()
    assert stats.created == 4 and stats.in_use == 0 and stats.acquired == 64_000
    pool.close()


def test_idle_connections_beyond_the_minimum_are_closed(url: str) -> None:
    pool = ConnectionPool(url, {"min_connections": 1, "max_connections": 3, "idle_timeout": 0.2})
    conns = [pool.get_connection() for _ in range(3)]
    for c in conns:
        pool.release_connection(c)
    assert pool.stats().idle == 3
    wait_for(lambda: pool.stats().idle == 1 and pool.stats().closed == {"idle": 2})
    time.sleep(0.4)
    assert pool.stats().idle == 1  # never below the minimum
    pool.close()


def test_connections_are_recycled_after_max_lifetime(url: str) -> None:
    pool = ConnectionPool(url, {"min_connections": 0, "max_connections": 2, "max_lifetime": 0.2})
    first = pool.get_connection()
    pool.release_connection(first)
    time.sleep(0.3)
    second = pool.get_connection()
    assert second is not first and first.closed
    assert pool.stats().closed.get("lifetime") == 1
    pool.release_connection(second)
    pool.close()


def test_validate_on_acquire_replaces_dead_connections(
    fault_proxy: FaultProxy, database: str
) -> None:
    url = f"{fault_proxy.url}/{database}"
    opts = {"min_connections": 1, "max_connections": 2, "validate_on_acquire": True}
    pool = ConnectionPool(url, opts)
    fault_proxy.set("refuse")
    with pytest.raises(ConnectError):  # the idle connection failed its ping: not handed out
        pool.get_connection()
    assert pool.stats().closed.get("broken") == 1
    fault_proxy.set("pass")
    with pool.connection() as conn:
        assert conn.command("SELECT 1") == 1
    pool.close()


def test_non_retryable_error_fails_on_the_first_attempt(url: str) -> None:
    pool = ConnectionPool(url, {"min_connections": 1, "max_connections": 2})
    calls = 0

    def op(conn: Connection) -> object:
        nonlocal calls
        calls += 1
        return conn.query("SELECT * FROM no_such_table")

    with pytest.raises(ServerError) as info:
        pool.with_connection(op)
    assert info.value.code == 60 and calls == 1
    stats = pool.stats()
    assert stats.retries == {} and stats.errors == {"server:60": 1}
    pool.close()


def test_dropped_insert_response_is_retried_without_duplicates(
    fault_proxy: FaultProxy, database: str
) -> None:
    pool = ConnectionPool(
        f"{fault_proxy.url}/{database}",
        {"min_connections": 1, "max_connections": 2, "retry": {"initial_backoff": 0.01}},
    )
    pool.with_connection(
        lambda c: c.command(
            "CREATE TABLE dedup (a Int32) ENGINE = MergeTree ORDER BY a "
            "SETTINGS non_replicated_deduplication_window = 100"
        )
    )
    pool.with_connection(
        lambda c: c.command("CREATE TABLE plain (a Int32) ENGINE = MergeTree ORDER BY a")
    )
    rows = [(i,) for i in range(100)]
    for table, expected in (("dedup", 100), ("plain", 200)):
        fault_proxy.set("drop", times=1, match=b"INSERT")
        summary = pool.with_connection(lambda c, t=table: c.insert(t, rows))
        assert summary.written_rows in (0, 100)  # 0: ClickHouse recognised the repeat
        count = pool.with_connection(lambda c, t=table: c.command(f"SELECT count() FROM {t}"))
        # The proxy let the server apply the first attempt: only the token prevents a copy.
        assert count == expected, table
    assert fault_proxy.counts["dropped"] == 2
    assert pool.stats().retries == {"transport": 2}
    pool.close()


def test_metrics_hooks_feed_the_pool_instruments(url: str) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    pool = ConnectionPool(
        url, {"min_connections": 2, "max_connections": 3}, hooks=MetricsHooks(metrics)
    )
    with pool.connection():
        assert registry.get_sample_value("chworkers_pool_connections_in_use") == 1
    assert registry.get_sample_value("chworkers_pool_connections_created_total") == 2
    assert registry.get_sample_value("chworkers_pool_connections_idle") == 2
    assert registry.get_sample_value("chworkers_pool_acquire_wait_seconds_count") == 1
    with pytest.raises(ServerError):
        pool.with_connection(lambda c: c.command("SELEC 1"))
    assert (
        registry.get_sample_value("chworkers_errors_total", {"kind": "server", "code": "62"}) == 1
    )
    pool.close()
    assert (
        registry.get_sample_value("chworkers_pool_connections_closed_total", {"reason": "shutdown"})
        == 2
    )


def test_close_waits_for_connections_in_use(url: str) -> None:
    pool = ConnectionPool(url, {"min_connections": 1, "max_connections": 2})
    conn = pool.get_connection()
    closer = threading.Thread(target=pool.close, kwargs={"timeout": 5})
    closer.start()
    wait_for(lambda: pool.closed)
    with pytest.raises(PoolClosedError):
        pool.get_connection()
    assert closer.is_alive()  # still waiting for ``conn``
    pool.release_connection(conn)
    closer.join(2)
    assert not closer.is_alive() and conn.closed


# -- faults with endpoints of their own -------------------------------------------------------


@pytest.fixture
def own_endpoints(tmp_path: Path) -> Iterator[Callable[[], EmbeddedClickHouse]]:
    started: list[EmbeddedClickHouse] = []

    def start() -> EmbeddedClickHouse:
        ch = EmbeddedClickHouse(tmp_path / f"ch{len(started)}")
        started.append(ch)
        return ch.start()

    yield start
    for ch in started:
        ch.close()


def test_endpoint_killed_and_restarted_mid_run(
    own_endpoints: Callable[[], EmbeddedClickHouse],
) -> None:
    ch = own_endpoints()
    pool = ConnectionPool(
        ch.url,
        {
            "min_connections": 2,
            "max_connections": 2,
            "retry": {
                "max_attempts": 50,
                "initial_backoff": 0.05,
                "max_backoff": 0.3,
                "deadline": 30,
            },
        },
    )
    pool.with_connection(
        lambda c: c.command(
            "CREATE TABLE t (a Int32) ENGINE = MergeTree ORDER BY a "
            "SETTINGS non_replicated_deduplication_window = 1000"
        )
    )
    done: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:  # 40 distinct batches of 10 rows, one after the other
        try:
            for i in range(40):
                batch = [(i * 10 + j,) for j in range(10)]
                pool.with_connection(lambda c, b=batch: c.insert("t", b))
                done.append(i)
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    wait_for(lambda: len(done) >= 5)
    ch.kill()  # mid-run: the writer's next inserts fail until the endpoint is back
    time.sleep(0.5)
    ch.start()
    thread.join(40)
    assert errors == [] and done == list(range(40))
    count, distinct = pool.with_connection(
        lambda c: c.query("SELECT count(), uniqExact(a) FROM t").result_rows[0]
    )
    assert (count, distinct) == (400, 400)  # nothing lost, nothing twice
    stats = pool.stats()
    assert stats.retries.get("transport", 0) >= 1
    assert stats.closed.get("broken", 0) + stats.closed.get("host_down", 0) >= 1
    pool.close()


@pytest.mark.timeout(90)
def test_failover_between_two_endpoints(own_endpoints: Callable[[], EmbeddedClickHouse]) -> None:
    a, b = own_endpoints(), own_endpoints()
    pool = ConnectionPool(
        f"http://{a.host}:{a.port},{b.host}:{b.port}",
        {
            "min_connections": 2,
            "max_connections": 4,
            "host_cooldown": 0.3,
            "retry": {"max_attempts": 5, "initial_backoff": 0.01},
        },
    )
    assert [h["connections"] for h in pool.stats().hosts] == [1, 1]  # spread over both
    ports = {pool.with_connection(lambda c: c.host.port) for _ in range(4)}
    assert ports == {a.port, b.port}  # requests are spread too
    a.kill()
    for _ in range(20):
        assert pool.with_connection(lambda c: (c.command("SELECT 1"), c.host.port)) == (1, b.port)
    hosts = {h["host"]: h for h in pool.stats().hosts}
    assert hosts[f"{a.host}:{a.port}"]["failures"] >= 1
    assert hosts[f"{b.host}:{b.port}"]["failures"] == 0
    a.start()  # comes back on the same port; the housekeeping re-probe notices
    wait_for(lambda: all(h["up"] and not h["failures"] for h in pool.stats().hosts), timeout=15)
    pool.close()


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


def test_gateway_503_marks_the_host_down_and_fails_over(
    fault_proxy: FaultProxy, endpoint: EmbeddedClickHouse, database: str
) -> None:
    pool = ConnectionPool(
        f"http://127.0.0.1:{fault_proxy.port},{endpoint.host}:{endpoint.port}/{database}",
        {"min_connections": 2, "max_connections": 2, "retry": {"initial_backoff": 0.01}},
    )
    fault_proxy.set("unavailable")
    for _ in range(6):
        assert pool.with_connection(lambda c: c.command("SELECT 1")) == 1
    hosts = {h["host"]: h for h in pool.stats().hosts}
    assert hosts[f"127.0.0.1:{fault_proxy.port}"]["failures"] >= 1
    assert "503" in str(hosts[f"127.0.0.1:{fault_proxy.port}"]["last_error"])
    assert fault_proxy.counts["unavailable"] >= 1
    assert pool.stats().retries.get("server", 0) >= 1
    pool.close()


def test_resize_at_run_time(url: str) -> None:
    pool = ConnectionPool(url, {"min_connections": 0, "max_connections": 1, "acquire_timeout": 5})
    first = pool.get_connection()
    got: list[Connection] = []
    t = threading.Thread(target=lambda: got.append(pool.get_connection()))
    t.start()
    wait_for(lambda: pool.stats().waiting == 1)
    pool.resize(2)  # the waiter may open a second connection at once
    t.join(5)
    assert len(got) == 1 and pool.stats().in_use == 2
    pool.resize(1)
    pool.release_connection(got[0])  # over the new bound: closed, not kept
    assert pool.stats().closed == {"resize": 1} and pool.stats().idle == 0
    pool.release_connection(first)
    assert pool.stats().idle == 1
    with pytest.raises(ConfigError, match="max_connections"):
        pool.resize(0)
    pool.close()


def test_maybe_applied_is_retried_only_with_a_token(fault_proxy: FaultProxy, database: str) -> None:
    pool = ConnectionPool(
        {"url": f"{fault_proxy.url}/{database}", "send_receive_timeout": 0.5},
        {"min_connections": 1, "max_connections": 2, "retry": {"initial_backoff": 0.01}},
    )
    pool.with_connection(
        lambda c: c.command(
            "CREATE TABLE t (a Int32) ENGINE = MergeTree ORDER BY a "
            "SETTINGS non_replicated_deduplication_window = 100"
        )
    )
    # A plain INSERT statement has no token: after a timeout it may have been applied.
    fault_proxy.set("delay", delay=1.0, times=1, match=b"INSERT")
    with pytest.raises(ResponseTimeoutError):
        pool.with_connection(lambda c: c.command("INSERT INTO t VALUES (1)"))
    assert pool.stats().retries == {}
    # insert() always carries a token: the same fault is retried, and not duplicated.
    fault_proxy.set("delay", delay=1.0, times=1, match=b"INSERT")
    pool.with_connection(lambda c: c.insert("t", [(2,)]))
    assert pool.stats().retries == {"timeout": 1}
    time.sleep(0.6)  # let the delayed answers drain
    rows = pool.with_connection(lambda c: c.query("SELECT a FROM t ORDER BY a").result_rows)
    assert rows == [(1,), (2,)]  # each applied once: the first by the server despite the timeout
    pool.close()


def test_close_timeout_force_closes_and_a_late_release_is_harmless(url: str) -> None:
    pool = ConnectionPool(url, {"min_connections": 1, "max_connections": 2})
    conn = pool.get_connection()
    start = time.monotonic()
    pool.close(timeout=0.2)
    assert 0.15 < time.monotonic() - start < 2 and conn.closed
    pool.release_connection(conn)  # the user finishes late: no error, no double count
    assert pool.stats().closed == {"shutdown": 1}
