"""A source's claim must not batch anew the entries of its own batches in flight.

The source claims entries idle for ``claim_idle``, its own among them (a batch's entries
idle while it was put together, before the heartbeat touches them). Entries of a batch
it holds in flight were skipped only when their manifest was found: when the manifest
was gone by the time it was looked up (the batch completed meanwhile, or a failover
with ``wait_replicas = 0`` lost it), they were batched anew beside the batch in flight:
a second batch of the same entries, refused by the manifest's check once the first had
acknowledged them, inserted twice if not (under load, in the failover test with
``max_delay`` as long as ``claim_idle``: batch after batch refused, their other entries
waiting for a claim). Entries of the batches in flight as the claim runs are now left
to them.
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


def test_a_claim_leaves_the_entries_of_a_batch_in_flight_to_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.add_entries(bodies(0, 100, 1))
    batches: list[SpooledBatch] = []
    source = redis_source(
        tmp_path, redis_server.url, batches, fetch_count=1000, claim_idle=CLAIM_IDLE
    )
    try:
        batch = first_batch(source, batches)  # in flight: handed on, not completed yet
        token = batch.meta["broker"]["token"]
        # Its manifest lost (a failover with wait_replicas = 0).
        assert redis_server.delete(manifest_key(token)) == 1
        time.sleep(CLAIM_IDLE * 1.5)  # its entries idle: the claim returns them
        source._claim()
        assert not source._assembly.ids  # not batched a second time
        source.complete(batch)  # inserted: its acknowledgement covers them
        assert source.wait_acked(10)  # by its thread, soon after
        assert redis_server.pending() == 0
    finally:
        source.batcher.close(5)
        source.redis.close()
    assert len(batches) == 1
