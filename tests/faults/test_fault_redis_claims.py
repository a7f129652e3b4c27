"""A daemon reading a Redis Stream killed with ``kill -9`` mid-batch (issue 13).

Its manifests are written, its inserts hang on a slow ClickHouse, its entries are
pending under its consumer name. Another daemon on the same stream must claim them
after ``claim_idle``, rebuild each batch from its manifest with the same token, and
land everything exactly once: rows sent == rows in ClickHouse == distinct ids, nothing
pending, no manifest left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from drillbase import wait_until
from drilldaemon import DaemonUnderTest
from drillfeeds import broker_bodies
from drilltargets import ProxiedClickHouse
from harness import base_config, broker_pipeline
from redisserver import RedisServer

pytestmark = pytest.mark.timeout(300)


def pipeline(server: RedisServer) -> dict[str, Any]:
    broker = {"url": server.url, "stream": "ev", "claim_idle": 2.0, "claim_interval": 0.3}
    return broker_pipeline("redis", broker)


def test_a_killed_daemons_batches_are_claimed_and_land_once(
    tmp_path: Path, endpoint: Any, database: str, fault_proxy: Any, redis_server: RedisServer
) -> None:
    target = ProxiedClickHouse(endpoint, database, fault_proxy)

    def make(name: str) -> DaemonUnderTest:
        (tmp_path / name).mkdir()
        config = base_config(tmp_path / name / "state", target.daemon_url, [pipeline(redis_server)])
        return DaemonUnderTest(tmp_path / name, config, target)

    a, b = make("a"), make("b")
    redis = redis_server.client()
    try:
        a.start()
        wait_until(lambda: redis.exists("ev") == 1, 60, "the group")
        target.slow(3.0)  # inserts hang: manifests written, batches in flight
        redis_server.add_entries(broker_bodies(0, 20_000, "redis"))
        wait_until(
            lambda: len(redis.keys("ev:chworkers:chworkers:manifest:*")) >= 3, 60, "manifests"
        )
        a.kill9(group=True)
        pending = redis.xpending("ev", "chworkers")["pending"]
        assert pending > 0, "the killed daemon held no entries"
        target.up()
        b.start()
        redis_server.add_entries(broker_bodies(20_000, 30_000, "redis"))
        assert wait_until(redis_server.settled, 120, "every entry acknowledged"), b.tail()
        assert target.rows_and_ids() == (30_000, 30_000), b.tail()
        assert "claimed" in b.log() and "rebuilding batch" in b.log(), b.tail()
        b.terminate(within=40)
    finally:
        redis.close()
        a.close()
        b.close()
