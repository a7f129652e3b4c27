"""Broker poison is dead-lettered once, even when its acknowledgement fails.

A poison entry (one without the payload field) is dead-lettered, then acknowledged. With
Redis down between the two, the entry stayed pending, was claimed again once idle, and
was dead-lettered a second time. The source now remembers (bounded) the poison whose
dead letters it wrote: delivered again, it is only acknowledged. NATS the same: a TERM
lost with its connection (a fault proxy resets it) led to a redelivery and a second letter.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from daemonthread import Running, daemon_config
from faultproxy import FaultProxy
from natsserver import NatsServer
from redisserver import RedisServer
from redissources import redis_source
from waiting import wait_for

from chworkers.daemon.spool import SpooledBatch
from chworkers.embedded import EmbeddedClickHouse
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


def test_nats_poison_whose_termination_was_lost_is_not_dead_lettered_again(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, nats_server: NatsServer
) -> None:
    """The same for NATS: the daemon's connection reset as it sends the TERM (a fault
    proxy), the message is redelivered after ``ack_wait`` and only terminated then."""
    nats_server.make_stream()
    proxy = FaultProxy(("127.0.0.1", nats_server.port))
    state = tmp_path / "state"
    pipeline = {
        "source": "nats",
        "format": "CSV",
        "create": "n UInt64, s String",
        "table": "csvt",
        "max_rows": 2000,
        "max_delay": 0.2,
        "nats": {"url": f"nats://127.0.0.1:{proxy.port}", "stream": "ev", "ack_wait": 2.0},
    }
    daemon = Running(daemon_config(state, f"{endpoint.url}/{database}", pipeline))
    try:
        proxy.set("reset", times=1, match=b"+TERM")  # the first TERM never reaches NATS
        nats_server.publish([b'1,"an unclosed quote\n'])
        wait_for(lambda: proxy.counts["reset"] == 1, 60, interval=0.1, what="the TERM lost")
        wait_for(nats_server.settled, 90, interval=0.2, what="the message terminated")
        redelivered = daemon.daemon.metrics.broker_redeliveries.labels(pipeline="p")._value.get()
    finally:
        daemon.stop()
        proxy.close()
    assert redelivered >= 1  # the lost TERM: delivered again
    written = [
        line
        for path in (state / "dead-letter").rglob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert len(written) == 1, written
