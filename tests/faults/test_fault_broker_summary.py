"""The summary `chworkers run` prints at its end does not count broker batches as spooled.

A Redis (or NATS) pipeline's batches wait in the spool's memory tier and are never
written to disk; a daemon stopped with some not inserted printed "spool: 1 batches left
in STATE/spool" although that directory held none (they stay pending in the broker).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from daemonthread import Running, daemon_config
from redisserver import RedisServer
from waiting import wait_for

pytestmark = pytest.mark.timeout(180)


def test_a_stop_with_broker_batches_in_memory_says_where_they_are(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with socket.socket() as closed:  # a ClickHouse that does not answer
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}/default"
    pipeline = {
        "source": "redis",
        "redis": {"url": redis_server.url, "stream": "ev"},
        "max_delay": "100ms",
    }
    cfg = daemon_config(tmp_path / "state", down, pipeline)
    cfg["supervisor"]["graceful_timeout"] = 1.0
    running = Running(cfg)
    client = redis_server.client()
    try:
        wait_for(lambda: client.exists("ev") == 1, 60, what="the group")
        client.xadd("ev", {"data": '{"n": 1, "s": "a"}'})
        spool = running.daemon.spool
        wait_for(lambda: spool.stats()["memory_batches"] >= 1, 60, what="a broker batch")
    finally:
        client.close()
        running.stop()
    summary = running.daemon.summary()
    assert "spool: 0 batches left in" in summary, summary
    assert "broker: 1 batch not inserted, left pending in the broker" in summary, summary
    assert not list((tmp_path / "state" / "spool").glob("*.batch"))
