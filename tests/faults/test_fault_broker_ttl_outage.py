"""A ClickHouse outage longer than ``manifest_ttl``: every row in exactly once, for both
brokers, through the daemon.

The batches waited in the spool (their inserts failing) while their manifests expired;
the next attempt found the manifest gone and skipped the batch as completed by another
daemon: the NATS source acknowledged its messages (lost rows), the Redis source forgot
it and batched its entries anew with another token (at least once). Now the daemon
keeps the manifests of the batches it holds (docs/brokers.md, "Where the guarantee
ends").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from drillbase import wait_until
from drilldaemon import DaemonUnderTest
from drillfeeds import broker_bodies
from drilltargets import ProxiedClickHouse
from harness import base_config, broker_pipeline
from natsserver import NatsServer
from redisserver import RedisServer

pytestmark = pytest.mark.timeout(300)

TTL = 1.0  # manifest_ttl (seconds): the outage lasts several times as long
ROWS = 3000


def consumer_made(server: NatsServer) -> bool:
    try:
        server.consumer_state()
    except Exception:
        return False
    return True


def test_nats_batches_outlive_their_manifest_ttl(
    tmp_path: Path, endpoint: Any, database: str, fault_proxy: Any, nats_server: NatsServer
) -> None:
    target = ProxiedClickHouse(endpoint, database, fault_proxy)
    nats_server.make_stream()
    broker = {"url": nats_server.url, "stream": "ev", "ack_wait": 5.0, "manifest_ttl": TTL}
    pipeline = broker_pipeline("nats", broker, max_rows=1000)
    config = base_config(tmp_path / "state", target.daemon_url, [pipeline])
    daemon = DaemonUnderTest(tmp_path, config, target)
    try:
        daemon.start()
        assert wait_until(lambda: consumer_made(nats_server), 60, "the consumer"), daemon.tail()
        target.rows_and_ids()  # answers: the daemon created the table
        target.down()
        nats_server.publish(broker_bodies(0, ROWS, "nats"))
        assert wait_until(lambda: nats_server.consumer_state()[2] >= 3, 60, "manifests"), (
            daemon.tail()
        )
        time.sleep(TTL * 4)  # the outage outlasts the manifests' TTL
        target.up()
        assert wait_until(nats_server.settled, 120, "every message acknowledged"), daemon.tail()
        assert target.rows_and_ids() == (ROWS, ROWS), daemon.tail()
        assert "its manifest is gone" not in daemon.log(), daemon.tail()
        daemon.terminate(within=40)
    finally:
        daemon.close()


def test_redis_batches_outlive_their_manifest_ttl(
    tmp_path: Path, endpoint: Any, database: str, fault_proxy: Any, redis_server: RedisServer
) -> None:
    target = ProxiedClickHouse(endpoint, database, fault_proxy)
    broker = {"url": redis_server.url, "stream": "ev", "claim_idle": 30.0, "manifest_ttl": TTL}
    pipeline = broker_pipeline("redis", broker, max_rows=1000)
    config = base_config(tmp_path / "state", target.daemon_url, [pipeline])
    daemon = DaemonUnderTest(tmp_path, config, target)
    redis = redis_server.client()
    try:
        daemon.start()
        wait_until(lambda: redis.exists("ev") == 1, 60, "the group")
        target.rows_and_ids()  # answers: the daemon created the table
        target.down()
        redis_server.add_entries(broker_bodies(0, ROWS, "redis"))
        assert wait_until(
            lambda: len(redis.keys("ev:chworkers:chworkers:manifest:*")) >= 3, 60, "manifests"
        ), daemon.tail()
        time.sleep(TTL * 4)  # the outage outlasts the manifests' TTL
        assert len(redis.keys("ev:chworkers:chworkers:manifest:*")) >= 3, "a manifest expired"
        target.up()
        assert wait_until(redis_server.settled, 120, "every entry acknowledged"), daemon.tail()
        assert target.rows_and_ids() == (ROWS, ROWS), daemon.tail()
        assert "its manifest is gone" not in daemon.log(), daemon.tail()
        daemon.terminate(within=40)
    finally:
        redis.close()
        daemon.close()
