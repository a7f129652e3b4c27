"""ConnectionPool: the seed API, limits, fairness, recycling, faults, leases, fork."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from chworkers import ConnectionPool, LeaseBroker, PoolOptions
from chworkers.errors import (
    ConfigError,
    ConnectError,
    PoolClosedError,
    RetriesExhaustedError,
)

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
