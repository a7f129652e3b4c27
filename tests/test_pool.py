"""ConnectionPool: the seed API, limits, fairness, recycling, retries, resizing, closing
(faults: test_poolfailover.py; several processes: test_poolprocesses.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from faultproxy import FaultProxy
from prometheus_client import CollectorRegistry
from waiting import wait_for

from chworkers import (
    Connection,
    ConnectionPool,
    EmbeddedClickHouse,
    LeaseBroker,
    MetricsHooks,
    PoolOptions,
)
from chworkers.errors import (
    ConfigError,
    ConnectError,
    PoolClosedError,
    PoolError,
    PoolTimeoutError,
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


def test_close_timeout_force_closes_and_a_late_release_is_harmless(url: str) -> None:
    pool = ConnectionPool(url, {"min_connections": 1, "max_connections": 2})
    conn = pool.get_connection()
    start = time.monotonic()
    pool.close(timeout=0.2)
    assert 0.15 < time.monotonic() - start < 2 and conn.closed
    pool.release_connection(conn)  # the user finishes late: no error, no double count
    assert pool.stats().closed == {"shutdown": 1}
