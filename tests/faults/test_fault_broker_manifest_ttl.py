"""A broker batch held longer than ``manifest_ttl`` (ClickHouse down for long) must not
be lost, nor inserted twice.

The manifest of a batch a daemon held (spooled, its inserts failing) expired after
``manifest_ttl``; the next attempt found it gone and took the batch for one another
daemon had completed: not inserted, and the NATS source acknowledged its messages (lost;
the Redis source forgot the batch, its entries claimed later and batched anew: at least
once, a duplicate if an attempt that timed out had landed). Now a live daemon keeps its
batches' manifests: the Redis source's heartbeat gives them ``manifest_ttl`` anew, the
NATS source writes an expired one again (same token) before the next attempt, and a
NATS batch whose manifest cannot be written again is left to be redelivered, not
acknowledged.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from brokerfeeds import bodies
from natsserver import NatsServer
from redisserver import RedisServer
from redissources import first_batch, manifest_key, redis_source
from waiting import wait_for

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.brokers.natsmanifests import Manifest
from chworkers.daemon.brokers.natsstream import NatsSource
from chworkers.daemon.brokers.options import NatsSourceSettings
from chworkers.daemon.spool import Spool, SpooledBatch

pytestmark = pytest.mark.timeout(120)

TTL = 1.0  # manifest_ttl (seconds): the least the setting takes


def test_redis_keeps_the_manifest_of_a_batch_held_past_manifest_ttl(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.add_entries(bodies(0, 100, 1))
    batches: list[SpooledBatch] = []
    source = redis_source(tmp_path, redis_server.url, batches, claim_idle=30.0, manifest_ttl=TTL)
    stop = threading.Event()
    heartbeat = threading.Thread(target=source._heartbeat, args=(stop,), daemon=True)
    try:
        source._create_group()
        source._fetch()
        source._cut()
        source._settle()
        [batch] = batches
        assert source.still_open(batch)  # the first attempt (fails: ClickHouse is down)
        heartbeat.start()
        time.sleep(TTL * 2.5)  # held past manifest_ttl, as in an outage
        assert source.still_open(batch)  # tried again with its token, not skipped
        source.complete(batch)  # inserted: acknowledged
        assert source.wait_acked(10)  # by its thread, soon after
    finally:
        stop.set()
        source.batcher.close(5)
        source.redis.close()
    assert redis_server.pending() == 0
    assert len(batches) == 1 and batches[0].rows == 100


def test_redis_writes_again_a_manifest_gone_while_its_entries_are_held(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The heartbeat could not refresh it (Redis unreachable as long), or a failover lost
    it: the entries are all still this consumer's, so the manifest is written again and
    the batch keeps its token (an attempt that timed out and landed is dropped by it)."""
    redis_server.add_entries(bodies(0, 100, 1))
    batches: list[SpooledBatch] = []
    source = redis_source(tmp_path, redis_server.url, batches, claim_idle=30.0)
    try:
        batch = first_batch(source, batches)
        token = batch.meta["broker"]["token"]
        assert source.still_open(batch)  # the first attempt (fails: ClickHouse is down)
        assert redis_server.delete(manifest_key(token)) == 1
        assert source.still_open(batch)  # tried again with its token, not skipped
        client = redis_server.client()
        try:
            assert client.exists(manifest_key(token)) == 1
        finally:
            client.close()
        source.complete(batch)  # inserted: acknowledged
        assert source.wait_acked(10)  # by its thread, soon after
    finally:
        source.batcher.close(5)
        source.redis.close()
    assert redis_server.pending() == 0
    assert len(batches) == 1


class Collected:
    """A Batcher that keeps the SpooledBatches it makes (in memory)."""

    def __init__(self, tmp_path: Path) -> None:
        self.batches: list[SpooledBatch] = []
        self.batcher = Batcher(Spool(tmp_path / "spool"), self.batches.append)


def nats_source(tmp_path: Path, server: NatsServer, collected: Collected) -> NatsSource:
    return NatsSource(
        name="p",
        table="ev",
        format="JSONEachRow",
        batcher=collected.batcher,
        options=NatsSourceSettings(url=server.url, stream="ev", ack_wait=10.0, manifest_ttl=TTL),
        limits=BatchLimits(max_rows=1000, max_delay=60),
        consumer="us",
        dead_letter=lambda records, token: None,
    )


def held_batch(source: NatsSource, collected: Collected, count: int) -> SpooledBatch:
    """Pull ``count`` messages into one batch (its manifest written), first attempt made."""

    def pulled_all() -> bool:
        source._fetch()
        return len(source._assembly.ids) == count

    wait_for(pulled_all, 30, what=f"the {count} messages pulled")
    source._submit_all([source._cut()])
    [batch] = collected.batches
    assert source.still_open(batch)  # the first attempt (fails: ClickHouse is down)
    return batch


def test_nats_writes_again_the_manifest_of_a_batch_held_past_manifest_ttl(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    nats_server.make_stream()
    nats_server.publish(bodies(0, 50, 1))
    collected = Collected(tmp_path)
    source = nats_source(tmp_path, nats_server, collected)
    try:
        source.link.connect()
        batch = held_batch(source, collected, 50)
        time.sleep(TTL * 1.5)  # held past manifest_ttl, as in an outage
        assert source.still_open(batch)  # tried again with its token, not skipped
        registry = source.link.call(source.link.manifests().load())
        assert batch.meta["broker"]["token"] in registry.manifests
        source.complete(batch)  # inserted: acknowledged
        wait_for(lambda: nats_server.consumer_state()[:2] == (0, 0), 30, what="acks")
    finally:
        collected.batcher.close(5)
        source.close()
    assert len(collected.batches) == 1 and collected.batches[0].rows == 50


def test_nats_does_not_acknowledge_a_batch_whose_manifest_is_gone(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    nats_server.make_stream()
    nats_server.publish(bodies(0, 50, 1))
    collected = Collected(tmp_path)
    source = nats_source(tmp_path, nats_server, collected)
    try:
        source.link.connect()
        batch = held_batch(source, collected, 50)
        time.sleep(TTL * 1.5)  # expired; meanwhile another batch's manifest took one
        other = Manifest("other", [[7, 7]], time.time(), "them")
        assert source.link.call(source.link.manifests().register(other, 0)) == {}
        assert not source.still_open(batch)  # not inserted ...
        source.complete(batch)  # ... and completed, as the daemon does with it
        assert not source._holding() and batch.meta["broker"]["token"] not in source._inflight
        time.sleep(0.5)
        assert nats_server.consumer_state()[1] == 50  # not acknowledged: nothing lost
    finally:
        collected.batcher.close(5)
        source.close()
