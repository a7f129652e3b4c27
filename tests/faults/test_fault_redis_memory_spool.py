"""A Redis pipeline's batches skip the disk (issue 13, docs/brokers.md "The local spool").

They used to be written to the fsync'd spool like every other batch: a write and a read of
every byte for no durability (Redis holds the entries until they are acknowledged, and the
manifest rebuilds the batch), and a stale copy replayed at the next start. Now they wait
in the spool's memory tier: a daemon killed while ClickHouse refuses its batches leaves no
batch file behind, and after its restart it rebuilds the batches from their manifests (its
own pending entries) and lands every row exactly once.
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


def test_a_killed_daemon_left_no_broker_batch_on_disk_and_rebuilds_them(
    tmp_path: Path, endpoint: Any, database: str, fault_proxy: Any, redis_server: RedisServer
) -> None:
    target = ProxiedClickHouse(endpoint, database, fault_proxy)
    broker = {"url": redis_server.url, "stream": "ev", "claim_idle": 30.0}
    pipeline = broker_pipeline("redis", broker, max_rows=1000)
    config = base_config(tmp_path / "state", target.daemon_url, [pipeline])
    daemon = DaemonUnderTest(tmp_path, config, target)
    redis = redis_server.client()
    try:
        daemon.start()
        wait_until(lambda: redis.exists("ev") == 1, 60, "the group")
        target.rows_and_ids()  # answers: the daemon created the table
        target.down()
        redis_server.add_entries(broker_bodies(0, 5000, "redis"))
        assert wait_until(
            lambda: len(redis.keys("ev:chworkers:chworkers:manifest:*")) >= 3, 60, "manifests"
        ), daemon.tail()
        assert not list((tmp_path / "state" / "spool").glob("*.batch")), "a broker batch on disk"
        daemon.kill9(group=True)
        assert redis.xpending("ev", "chworkers")["pending"] > 0
        target.up()
        daemon.start()  # the same state directory: the same consumer name
        assert wait_until(redis_server.settled, 120, "every entry acknowledged"), daemon.tail()
        assert target.rows_and_ids() == (5000, 5000), daemon.tail()
        assert "pending from before, rebuilt" in daemon.log(), daemon.tail()
        assert "replaying" not in daemon.log()  # nothing came back from the spool
        daemon.terminate(within=40)
    finally:
        redis.close()
        daemon.close()
