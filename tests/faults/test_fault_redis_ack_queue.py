"""A Redis source's acknowledgement of an inserted batch does not hold up the daemon.

The daemon's completion thread sent the ``MULTI``/``EXEC`` that acknowledges a batch
and removes its manifest itself, one batch at a time: 30 to 700 ms on a loaded machine
with ``appendfsync always``, during which the next batch, inserted already, waited for
that thread and counted as in flight, so with one worker the insert after it waited
too; and with Redis down, ``complete`` raised and the batch was inserted again at each
retry. Now ``complete`` queues the acknowledgement and returns; a thread of the source
sends what is queued in one transaction, again with a backoff while Redis fails (the
source degraded meanwhile, the batch held: its entries and manifest refreshed), and a
stopping daemon waits a little for what is left, which otherwise stays pending with its
manifest and is rebuilt with the same token at the next start.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from brokerfeeds import bodies
from redisserver import RedisServer
from redissources import first_batch, manifest_key, redis_source
from waiting import wait_for

from chworkers.daemon.brokers import redisstream
from chworkers.daemon.spool import SpooledBatch

pytestmark = pytest.mark.timeout(120)


def exec_calls(redis_server: RedisServer) -> int:
    """How many transactions Redis ran since it started (``INFO commandstats``)."""
    client = redis_server.client()
    try:
        return int(client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0))
    finally:
        client.close()


def test_batches_completed_while_redis_is_down_are_acknowledged_once_it_is_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.add_entries(bodies(0, 300, 1))
    batches: list[SpooledBatch] = []
    source = redis_source(tmp_path, redis_server.url, batches, fetch_count=100)
    try:
        source._create_group()
        for _ in range(3):  # three batches of 100 entries, handed on
            source._fetch()
            source._cut()
        source._settle()
        assert len(batches) == 3
        tokens = [b.meta["broker"]["token"] for b in batches]
        redis_server.stop()
        for batch in batches:
            source.complete(batch)  # inserted: does not raise, does not wait for Redis
        wait_for(lambda: source.problems() != [], 30, what="the source degraded")
        assert "acknowledging" in source.problems()[0]
        assert not source.wait_acked(0.5)
        assert all(t in source._inflight for t in tokens)  # held: refreshed, not claimed
        redis_server.start()  # its AOF kept the entries, their delivery, the manifests
        assert source.wait_acked(30)
        assert redis_server.pending() == 0
        assert exec_calls(redis_server) == 1  # the three in one transaction
        client = redis_server.client()
        try:
            assert not any(client.exists(manifest_key(t)) for t in tokens)
        finally:
            client.close()
        assert source.problems() == []
        assert not source._inflight
    finally:
        source.close()
        source.batcher.close(5)
        source.redis.close()


def test_a_stop_leaves_what_was_not_acknowledged_to_be_rebuilt_with_its_token(
    tmp_path: Path,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(redisstream, "ACK_CLOSE_WAIT", 0.5)
    redis_server.add_entries(bodies(0, 100, 1))
    batches: list[SpooledBatch] = []
    source = redis_source(tmp_path / "first", redis_server.url, batches)
    try:
        batch = first_batch(source, batches)
        redis_server.stop()
        source.complete(batch)
        with caplog.at_level(logging.WARNING):
            source.close()  # the daemon stopping: it does not wait for Redis for long
        assert "1 batch inserted and not acknowledged" in caplog.text
    finally:
        source.batcher.close(5)
        source.redis.close()
    redis_server.start()
    assert redis_server.pending() == 100  # nothing acknowledged, nothing lost
    again: list[SpooledBatch] = []
    restarted = redis_source(tmp_path / "second", redis_server.url, again)  # consumer "me"
    try:
        restarted._create_group()
        restarted._read_own_pending()  # its own pending entries: the manifest's batch
        [rebuilt] = again
        assert rebuilt.meta["broker"]["token"] == batch.meta["broker"]["token"]
        assert rebuilt.meta["broker"]["rebuilt"] and rebuilt.rows == 100
        restarted.complete(rebuilt)  # dropped by ClickHouse as a duplicate; acknowledged
        assert restarted.wait_acked(10)
        assert redis_server.pending() == 0
    finally:
        restarted.close()
        restarted.batcher.close(5)
        restarted.redis.close()
