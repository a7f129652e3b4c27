"""Entries delivered again after Redis lost their delivery must go into one batch only.

A Redis that loses its last writes (a failover to a replica that had not had them yet,
a restart from an older copy) can lose the delivery of entries it had already sent to a
consumer (``XREADGROUP ... >``): they are new to the group again, and the next read
delivers them a second time, to the same consumer. The source put them into its batch
once more beside the copies it still held (the batch in the making, or the entries of a
read not batched yet), and the manifest's check let that batch go on: every one of its
ids was pending for this consumer, as it was after the second delivery. The entry's rows
were inserted twice, under one token or two (in CI, across a Redis Cluster failover
under load: 20,010 rows for 20,000 ids). Now the entries read after the source's
connection to Redis failed are checked against those it holds, and a second copy is
left out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from brokerfeeds import bodies
from redisserver import RedisServer
from redissources import redis_source

from chworkers.daemon.brokers import redisentries
from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisgroup import StreamGroup
from chworkers.daemon.brokers.redisstream import RedisSource
from chworkers.daemon.spool import SpooledBatch
from chworkers.errors import BrokerError

pytestmark = pytest.mark.timeout(120)


def make_source(
    tmp_path: Path, server: RedisServer, batches: list[SpooledBatch], fetch_count: int
) -> RedisSource:
    return redis_source(tmp_path, server.url, batches, fetch_count=fetch_count, claim_idle=600)


class LosesWrites:
    """Brings ``server`` back as it was when :meth:`save` was called: what it wrote
    since (the deliveries) is lost, as on a replica promoted before it had them."""

    def __init__(self, server: RedisServer, tmp_path: Path) -> None:
        self.server = server
        self.aof = server.directory / "appendonlydir"
        self.saved = tmp_path / "saved-aof"

    def save(self) -> None:
        shutil.copytree(self.aof, self.saved)  # appendfsync always: all written so far

    def fail_over(self) -> None:
        self.server.kill()
        shutil.rmtree(self.aof)
        shutil.copytree(self.saved, self.aof)
        self.server.start()


@pytest.mark.parametrize("where", ["the batch in the making", "a read not batched yet"])
def test_entries_delivered_again_after_redis_lost_their_delivery_are_batched_once(
    tmp_path: Path, redis_server: RedisServer, where: str
) -> None:
    redis_server.add_entries(bodies(0, 200, 1))
    batches: list[SpooledBatch] = []
    source = make_source(tmp_path, redis_server, batches, fetch_count=100)
    redis = LosesWrites(redis_server, tmp_path)
    try:
        source._create_group()
        redis.save()  # the stream and its group, nothing delivered yet
        # 100 entries delivered to "me" into the batch in the making; the reply was full,
        # so the next read is sent ahead: 100 more delivered, not batched yet.
        source._fetch()
        assert len(source._assembly.ids) == 100 and source.redis.reading_ahead()
        if where == "a read not batched yet":
            source._claim()  # a claim takes the read sent ahead's entries, to batch later
            assert sum(len(redisentries.piece_ids(p)) for p in source._unbatched) == 100
        redis.fail_over()  # both deliveries lost
        for _ in range(20):  # the reads after the failover deliver all 200 again
            try:
                source._fetch()
            except BrokerError:
                continue  # the connection to the killed Redis; the next fetch reconnects
            if redis_server.pending() == 200 and not (
                source.redis.reading_ahead() or source._unbatched
            ):
                break
        assert redis_server.pending() == 200
        source._cut()
        source._settle()
    finally:
        source.batcher.close(5)
        source.redis.close()
    ids = [i for batch in batches for i in batch.meta["broker"]["ids"]]
    assert len(ids) == 200 and len(set(ids)) == 200
    assert sum(batch.rows for batch in batches) == 200


def test_a_connection_redis_py_opened_again_by_itself_counts_as_new(
    redis_server: RedisServer,
) -> None:
    """redis-py connects a closed connection again at its next command, unasked (a pool
    that disconnects the connections in use closes the reads' one too): the reads after
    it may meet a Redis that lost deliveries as well, so the source must see a new
    connection there too."""
    redis_server.add_entries(bodies(0, 10, 1))
    group = StreamGroup(RedisSourceSettings(url=redis_server.url, stream="ev"), "me", "test")
    try:
        group.create()
        assert len(group.read_new(100, 100, list)) == 10
        first = group.connection()
        group.client.connection_pool.disconnect(inuse_connections=True)
        assert group.read_new(100, 100, list) == []  # reconnected: no error to see
        assert group.connection() > first
    finally:
        group.close()
