"""A batch whose manifest write failed must be sent again, not left to a claim.

When Redis failed between a batch's cut and the verdict on its manifest (a restart, a
failover, the stream's slot moving in a cluster: ``TRYAGAIN`` during a resharding), the
source dropped the batch: its entries stayed pending for its own consumer until its own
claim took them back after ``claim_idle`` (30 s by default), once per failure. The source
now keeps the batch and sends its manifest again once Redis answers: the script writes
the same manifest when every entry is still this consumer's (and refuses when another
daemon claimed one meanwhile, as on the first send).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from brokerfeeds import bodies
from redisserver import RedisServer
from redissources import manifest_key, redis_source

from chworkers.daemon.brokers.redisstream import RedisSource
from chworkers.daemon.spool import SpooledBatch
from chworkers.errors import BrokerError

pytestmark = pytest.mark.timeout(120)


def make_source(tmp_path: Path, server: RedisServer, batches: list[SpooledBatch]) -> RedisSource:
    return redis_source(tmp_path, server.url, batches, fetch_count=100, claim_idle=600)


@pytest.mark.parametrize("when", ["before the cut", "after the cut"])
def test_a_manifest_lost_to_a_redis_restart_is_sent_again(
    tmp_path: Path, redis_server: RedisServer, when: str
) -> None:
    redis_server.add_entries(bodies(0, 200, 1))
    batches: list[SpooledBatch] = []
    source = make_source(tmp_path, redis_server, batches)
    try:
        source._create_group()
        source._fetch()  # a first batch: the manifests' connection is open
        source._cut()
        source._settle()
        source._fetch()  # 100 entries, pending for "me": a batch in the making
        assert len(source._assembly.ids) == 100
        assert redis_server.proc is not None
        if when == "before the cut":
            redis_server.kill()
        else:  # the script sent, and Redis gone before it ran it
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
        with pytest.raises(BrokerError):  # sending to a dead peer may fail only at the verdict
            source._cut()
            redis_server.kill()
            source._settle()
        assert len(batches) == 1
        redis_server.start()  # the same data (AOF): the entries are still pending for "me"
        source._settle()
    finally:
        source.batcher.close(5)
        source.redis.close()
    # Handed on at once, with its manifest, not after claim_idle (600 s).
    assert [len(b.meta["broker"]["ids"]) for b in batches] == [100, 100]
    client = redis_server.client()
    try:
        token = batches[1].meta["broker"]["token"]
        assert client.exists(manifest_key(token))
    finally:
        client.close()
