"""Broker poison is dead-lettered once, even when its acknowledgement fails.

A poison entry (one without the payload field) is dead-lettered, then acknowledged. With
Redis down between the two, the entry stayed pending, was claimed again once idle, and
was dead-lettered a second time. The source now remembers (bounded) the poison whose
dead letters it wrote: delivered again, it is only acknowledged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from redisserver import RedisServer
from redissources import redis_source

from chworkers.daemon.spool import SpooledBatch
from chworkers.errors import BrokerError

pytestmark = pytest.mark.timeout(120)


def test_poison_whose_ack_failed_is_acknowledged_not_dead_lettered_again(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    client.xadd("ev", {"other": "no data field"})
    client.close()
    batches: list[SpooledBatch] = []
    source = redis_source(tmp_path, redis_server.url, batches, claim_idle=0.2)
    letters: list[str] = []

    def dead_letter(records: Sequence[tuple[bytes, BaseException]], token: str) -> None:
        letters.extend(str(error) for _, error in records)
        if len(letters) == 1:
            redis_server.stop()  # the dead letter is written; the ack will fail

    source.dead_letter = dead_letter
    source._create_group()
    with pytest.raises(BrokerError):
        source._fetch()  # dead-letters the entry, then cannot acknowledge it
    assert len(letters) == 1 and "no payload field" in letters[0], letters
    redis_server.start()  # AOF always: the entry is still pending for this consumer
    assert redis_server.pending() == 1
    time.sleep(0.5)  # idle past claim_idle
    for _ in range(20):  # the client reconnects on first use
        try:
            source._claim()
            break
        except BrokerError:
            time.sleep(0.2)
    assert redis_server.pending() == 0  # claimed again and acknowledged
    assert len(letters) == 1, letters  # not dead-lettered twice
    assert batches == []
