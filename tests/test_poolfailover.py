"""ConnectionPool under faults: its ClickHouse killed and restarted mid-run, failover
between two endpoints, a gateway's 503, a response lost after the insert may have
landed (retried only with a deduplication token)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from waiting import wait_for

from chworkers import ConnectionPool, EmbeddedClickHouse
from chworkers.errors import ResponseTimeoutError

pytestmark = pytest.mark.timeout(60)


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
