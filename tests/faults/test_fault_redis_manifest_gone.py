"""A batch not inserted because its manifest is gone must not acknowledge its entries.

Before a batch is tried again, the daemon checks that its manifest still exists; a batch
whose manifest is gone is not inserted. The daemon then completed it as if inserted, and
the source acknowledged its entries. That is right when another daemon completed the
batch (its entries are acknowledged already), but a manifest can also be gone while its
entries were never inserted: it expired (``manifest_ttl``), or a failover lost it
(``wait_replicas = 0``). Their entries were acknowledged without ever reaching
ClickHouse: lost. Now such a batch is only forgotten; its entries stay pending, are
claimed after ``claim_idle`` and batched anew. (A manifest gone while every entry is
still this consumer's is written again: test_fault_broker_manifest_ttl.py; here one
entry was claimed by another consumer meanwhile.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from brokerfeeds import bodies
from redisserver import RedisServer
from redissources import first_batch, manifest_key, redis_source

from chworkers.daemon.spool import SpooledBatch

pytestmark = pytest.mark.timeout(120)

CLAIM_IDLE = 0.5


def test_a_batch_whose_manifest_is_gone_leaves_its_entries_pending(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.add_entries(bodies(0, 100, 1))
    batches: list[SpooledBatch] = []
    source = redis_source(
        tmp_path, redis_server.url, batches, fetch_count=1000, claim_idle=CLAIM_IDLE
    )
    try:
        first = first_batch(source, batches)
        token = first.meta["broker"]["token"]
        assert source.still_open(first)  # the first attempt: not looked up
        # The manifest expires (or a failover loses it) before the next attempt, and one
        # of its entries is another consumer's now: the manifest cannot be written again.
        assert redis_server.delete(manifest_key(token)) == 1
        client = redis_server.client()
        try:
            entry = first.meta["broker"]["ids"][0]
            assert client.xclaim("ev", "chworkers", "other", 0, [entry], justid=True)
        finally:
            client.close()
        assert not source.still_open(first)  # not inserted again ...
        source.complete(first)  # ... and completed, as the daemon does with it
        assert redis_server.pending() == 100  # not acknowledged: nothing lost
        assert not source._holding() and token not in source._inflight
        time.sleep(CLAIM_IDLE * 1.5)
        source._claim()  # no manifest: batched anew
        source._cut()
        source._settle()
    finally:
        source.batcher.close(5)
        source.redis.close()
    assert len(batches) == 2
    again = batches[1].meta["broker"]
    assert sorted(again["ids"]) == sorted(first.meta["broker"]["ids"])
    assert batches[1].rows == 100
