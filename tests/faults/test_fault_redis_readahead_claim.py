"""A Redis source's read sent ahead, then a claim, must not batch an entry twice.

The source sends its next ``XREADGROUP`` while it batches the last reply's entries. When
it then waited longer than ``claim_idle`` (the spool's memory full while ClickHouse was
slow), the entries delivered by that read were idle enough for its own ``XAUTOCLAIM`` to
return them: they went into a batch as claimed entries, and again when the read's reply
was taken, so two manifests held them (both passed the "pending for this consumer" check)
and their rows were inserted twice. A claim now takes the read's reply first and leaves
its entries out.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redisserver import RedisServer

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisstream import RedisSource
from chworkers.daemon.spool import Spool, SpooledBatch

pytestmark = pytest.mark.timeout(120)


def test_entries_of_a_read_sent_ahead_are_not_claimed_into_a_second_batch(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    pipe = client.pipeline(transaction=False)
    for i in range(3000):
        pipe.xadd("ev", {"data": f'{{"n":{i}}}'})
    pipe.execute()
    batches: list[SpooledBatch] = []
    spool = Spool(tmp_path / "spool")
    batcher = Batcher(spool, batches.append)
    source = RedisSource(
        name="ev",
        table="ev",
        format="JSONEachRow",
        batcher=batcher,
        options=RedisSourceSettings(
            url=redis_server.url, stream="ev", fetch_count=1000, claim_idle=0.2
        ),
        consumer="me",
        dead_letter=lambda records, token: None,
        limits=BatchLimits(max_rows=700, max_delay=60),
    )
    try:
        source._create_group()
        source._fetch()  # 1,000 entries: one batch cut, the next read sent ahead
        assert source.redis.reading_ahead()
        time.sleep(0.5)  # the source waited: the read's entries are idle past claim_idle
        for _ in range(3):  # XAUTOCLAIM goes through the pending entries fetch_count at a time
            source._claim()
        while source.rows < 3000:
            source._fetch()
            if source._assembly.ids:
                source._cut()
            source._settle()
    finally:
        batcher.close(5)
        source.redis.close()
        client.close()
    ids = [i for batch in batches for i in batch.meta["broker"]["ids"]]
    assert len(ids) == len(set(ids)) == 3000
    assert sum(batch.rows for batch in batches) == 3000
