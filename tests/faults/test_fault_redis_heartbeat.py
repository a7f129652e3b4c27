"""A daemon reading a Redis Stream while ClickHouse is down (issue 13).

Its in-flight entries' idle time was refreshed only between two reads of its source
thread: with reads blocking for up to 1 s, and the thread waiting in the batcher when the
spool is full, the entries of a live daemon reached ``claim_idle`` and were claimed
(by itself or another daemon), each claim a delivery more, until ``max_deliver`` would
dead-letter good data during a long outage. The refresh now runs in a thread of its own
every ``claim_idle / 4``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from daemonthread import Running, count, daemon_config
from redisserver import RedisServer
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(300)


def settled(server: RedisServer) -> bool:
    client = server.client()
    try:
        groups = client.xinfo_groups("ev")
        return all(g["pending"] == 0 and g["lag"] == 0 for g in groups) and not client.keys(
            "ev:chworkers:*:manifest*"
        )
    finally:
        client.close()


def test_a_live_daemon_keeps_its_entries_while_clickhouse_is_down(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    fault_proxy: Any,
    redis_server: RedisServer,
) -> None:
    """In-flight entries have their idle time refreshed, so no other daemon claims them
    (and inserts them again) while this one waits for ClickHouse."""
    url = f"{fault_proxy.url}/{database}"
    daemon = Running(
        daemon_config(
            tmp_path / "state",
            url,
            {
                "source": "redis",
                "redis": {"url": redis_server.url, "stream": "ev", "claim_idle": 1.0},
            },
        )
    )
    client = redis_server.client()
    try:
        fault_proxy.set("refuse")
        client.xadd("ev", {"data": "".join(f'{{"n":{i},"s":"r{i}"}}\n' for i in range(1000))})
        wait_for(lambda: client.keys("ev:chworkers:chworkers:manifest:*"), 30, what="a manifest")
        for _ in range(12):  # 3 s: three times claim_idle
            entries = client.xpending_range("ev", "chworkers", "-", "+", count=1000)
            assert entries and max(e["time_since_delivered"] for e in entries) < 1000, entries
            time.sleep(0.25)
        fault_proxy.set("pass")
        wait_for(lambda: settled(redis_server), 60, interval=0.2, what="all entries acked")
    finally:
        fault_proxy.set("pass")
        daemon.stop()
    assert count(endpoint, database) == (1000, 1000)
