"""A Redis Cluster that is not there when the daemon starts (issue 13).

redis-py's RedisCluster asks a node for the cluster's slots as it is made, and the
Redis source made its client when the daemon made its sources: with ``cluster = true``
and no node reachable (or a Redis not in cluster mode), the daemon did not start, with
redis-py's RedisClusterException, where a single Redis down at start only makes the
source degraded until it answers. The source now connects on first use: it says
Redis is failing and tries again; `chworkers check` says why (a BrokerError).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from debpackages import free_port
from redisserver import RedisServer
from waiting import wait_for

from chworkers.daemon.batcher import Batcher
from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisclient import describe
from chworkers.daemon.brokers.redisstream import RedisSource
from chworkers.daemon.spool import Spool
from chworkers.errors import BrokerError, ConfigError

pytestmark = pytest.mark.timeout(60)


def source(tmp_path: Path, url: str) -> RedisSource:
    return RedisSource(
        name="ev",
        table="ev",
        format="JSONEachRow",
        batcher=Batcher(Spool(tmp_path / "spool"), lambda batch: None),
        options=RedisSourceSettings(url=url, stream="ev", cluster=True),
        consumer="me",
        dead_letter=lambda records, token: None,
    )


def test_a_cluster_down_at_start_makes_the_source_degraded(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    made = source(tmp_path, url)  # no node answers: made all the same
    with pytest.raises(BrokerError, match="cannot be connected"):
        made.redis.create()
    stop = threading.Event()
    thread = threading.Thread(target=made.run, args=(stop,))
    thread.start()
    try:
        wait_for(made.problems, 30, interval=0.05, what="the source degraded")
        assert any(url.removesuffix("/0") in p for p in made.problems()), made.problems()
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    with pytest.raises(BrokerError):
        describe(RedisSourceSettings(url=url, stream="ev", cluster=True), "test")
    with pytest.raises(ConfigError, match=r"redis\.url"):
        source(tmp_path, "http://not-redis")


def test_a_redis_not_in_cluster_mode_is_named(tmp_path: Path, redis_server: RedisServer) -> None:
    with pytest.raises(BrokerError, match="Cluster mode is not enabled"):
        source(tmp_path, redis_server.url).redis.create()
