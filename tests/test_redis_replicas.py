"""``redis.wait_replicas``: a batch goes on (to be inserted) only once its manifest is on
that many replicas (``WAIT``), so a failover to one of them keeps exactly once; until
then the source is degraded and writes the manifest and waits again. A real primary and
replica (tests/redisserver.py); the replica stopped (SIGSTOP) stands for one that lags.
The failover itself, in a cluster: tests/test_redis_cluster_moves.py."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokerfeeds import bodies
from redisserver import RedisServer
from redissources import manifest_key, redis_source
from waiting import wait_for

from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisgroup import StreamGroup
from chworkers.daemon.spool import SpooledBatch
from chworkers.errors import BrokerError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def replica(tmp_path: Path, redis_server: RedisServer) -> Iterator[RedisServer]:
    server = RedisServer(
        tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(redis_server.port))
    )
    server.start()
    client = server.client()
    try:
        wait_for(
            lambda: client.info("replication").get("master_link_status") == "up",
            30,
            interval=0.05,
            what="the replica in sync",
        )
        yield server
    finally:
        client.close()
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def pause(server: RedisServer, sig: signal.Signals) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, sig)


def test_a_batch_waits_for_its_manifest_on_the_replica(
    tmp_path: Path, redis_server: RedisServer, replica: RedisServer
) -> None:
    redis_server.add_entries(bodies(0, 100, 1))
    batches: list[SpooledBatch] = []
    source = redis_source(
        tmp_path, redis_server.url, batches, fetch_count=100, wait_replicas=1, wait_timeout=2.0
    )
    try:
        source._create_group()
        source._fetch()
        pause(replica, signal.SIGSTOP)  # the replica acknowledges nothing any more
        source._cut()
        with pytest.raises(BrokerError, match="reached 0 of wait_replicas = 1 replicas"):
            source._settle()
        assert not batches  # written on the primary only: not inserted
        pause(replica, signal.SIGCONT)
        source._settle()  # written and waited for again
    finally:
        source.batcher.close(5)
        source.redis.close()
    assert [len(b.meta["broker"]["ids"]) for b in batches] == [100]
    token = batches[0].meta["broker"]["token"]
    copy = replica.client()
    try:
        assert copy.exists(manifest_key(token))
    finally:
        copy.close()


def test_a_rebuilt_batch_waits_for_its_manifest_on_the_replica(
    redis_server: RedisServer, replica: RedisServer
) -> None:
    options = RedisSourceSettings(
        url=redis_server.url, stream="ev", wait_replicas=1, wait_timeout=2.0
    )
    group = StreamGroup(options, "me", "test")
    try:
        group.create()
        redis_server.add_entries(bodies(0, 1, 1))
        ids = [m.id for m in group.read(">", 10)]
        assert group.verdict(group.send_manifest("chw-redis-t", ids, fresh=True)) is None
        group.replicate("chw-redis-t")  # the replica has it: at once
        pause(replica, signal.SIGSTOP)
        with pytest.raises(BrokerError, match="reached 0 of"):
            group.replicate("chw-redis-t")
        pause(replica, signal.SIGCONT)
        group.replicate("chw-redis-t")
    finally:
        group.close()
