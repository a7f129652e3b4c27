"""A pull that brings a dead daemon's messages (whose batch is rebuilt from the stream)
and new ones: the new ones' batch is written and handed on before the rebuild reads
the stream, and the redelivered ones are kept (in-progress notes) while it does.

The source rebuilt first: the rebuild reads its batch back message by message, which
takes seconds for a large batch on a loaded machine, and only then wrote the new
messages' manifest, past their ack_wait: "ready too late", not inserted, redelivered.
After a ClickHouse outage with daemons killed (benchmarks/bench_brokers.py scale
--clickhouse-outage 20), every pull brought redeliveries, and the daemons went round
in that loop until the messages reached max_deliver and were dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from natsserver import NatsServer
from waiting import wait_for

from chworkers.clickhouse.dedup import broker_token
from chworkers.daemon.batcher import BatchLimits
from chworkers.daemon.brokers.natsmanifests import Manifest, Registry, to_ranges
from chworkers.daemon.brokers.natsreplies import delivery
from chworkers.daemon.brokers.natsstream import NatsSource
from chworkers.daemon.brokers.options import NatsSourceSettings

#: How long the source's reads of the stream take here (past ack_wait * 7 / 8).
SLOW = 2.5


class Batches:
    """A batcher that keeps what it is given: (token, rows, rebuilt)."""

    def __init__(self) -> None:
        self.added: list[tuple[str, int, bool]] = []

    def add(self, table: str, payload: bytes, rows: int, **kw: Any) -> None:
        broker = kw["meta"]["broker"]
        self.added.append((broker["token"], rows, broker["rebuilt"]))


def test_new_messages_are_not_kept_waiting_by_a_rebuild(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="chworkers")
    nats_server.make_stream()
    nats_server.publish([b'{"n":%d}\n' % n for n in range(20)])

    async def dead_daemon(client: Any) -> list[int]:
        """Pulls the first 5 messages, writes their manifest, dies."""
        from nats.js.api import AckPolicy, ConsumerConfig

        js = client.jetstream()
        config = ConsumerConfig(
            durable_name="chworkers", ack_policy=AckPolicy.EXPLICIT, ack_wait=2.0
        )
        await js.add_consumer("ev", config)
        pull = await js.pull_subscribe_bind("chworkers", "ev")
        seqs = [delivery(m.reply)[0] for m in await pull.fetch(5, timeout=5)]
        token = broker_token("nats", "ev", "chworkers", [str(s) for s in seqs])
        registry = Registry({token: Manifest(token, to_ranges(seqs), 1e10, "dead")}, 0)
        kv = await js.create_key_value(bucket="chworkers", history=1)
        await kv.create("ev.chworkers", registry.encode())
        return seqs

    dead = nats_server.run(dead_daemon)
    assert dead == [1, 2, 3, 4, 5]
    batches = Batches()
    source = NatsSource(
        name="p",
        table="ev",
        format="JSONEachRow",
        batcher=batches,  # type: ignore[arg-type]
        options=NatsSourceSettings(url=nats_server.url, stream="ev", ack_wait=2.0),
        limits=BatchLimits(max_rows=1000, max_delay=0.2),
        consumer="us",
        dead_letter=lambda records, token: None,
    )
    stop = threading.Event()
    try:
        source.link.connect()
        wire = source.link.wire()
        read = wire.read

        async def slow_read(seqs: list[int]) -> Any:
            await asyncio.sleep(SLOW)  # a large batch read back on a loaded machine
            return await read(seqs)

        wire.read = slow_read  # type: ignore[method-assign]
        wait_for(lambda: nats_server.consumer_state()[0] == 15, 10, what="the dead daemon's")
        time.sleep(2.2)  # the dead daemon's messages are due for redelivery
        thread = threading.Thread(target=source.run, args=(stop,))
        thread.start()
        wait_for(lambda: len(batches.added) >= 2, 30, interval=0.1, what="two batches")
        time.sleep(SLOW)  # anything redelivered meanwhile comes in now
        stop.set()
        thread.join(30)
    finally:
        stop.set()
        source.close()
    fresh = broker_token("nats", "ev", "chworkers", [str(s) for s in range(6, 21)])
    rebuilt = broker_token("nats", "ev", "chworkers", [str(s) for s in dead])
    assert batches.added == [(fresh, 15, False), (rebuilt, 5, True)]
    assert not [r for r in caplog.records if "too late" in r.message]
