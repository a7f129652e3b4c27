"""`chworkers check` counts the NATS manifests of batches still in flight, not stale ones.

A manifest stays in the bucket's key after its batch's messages are acknowledged, until
the next change of the key prunes it; after a pipeline's last batch that is until more
data comes. `check` counted them all: "0 pending, lag 0, ...; 6 manifests in bucket
chworkers" on an idle, fully acknowledged pipeline, which reads as six batches in flight.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from natsserver import NatsServer

from chworkers.daemon.brokers.natsclient import describe
from chworkers.daemon.brokers.natsmanifests import Manifest, ManifestStore
from chworkers.daemon.brokers.options import NatsSourceSettings


@pytest.mark.timeout(120)
def test_check_counts_only_manifests_of_unacknowledged_messages(nats_server: NatsServer) -> None:
    nats_server.make_stream("ev")
    nats_server.publish([b'{"n": %d}\n' % i for i in range(5)])

    async def settle(client: Any) -> None:
        import nats.js.api

        js = client.jetstream()
        await js.add_consumer(
            "ev",
            nats.js.api.ConsumerConfig(
                durable_name="chworkers", ack_policy=nats.js.api.AckPolicy.EXPLICIT
            ),
        )
        sub = await js.pull_subscribe_bind("chworkers", "ev")
        messages = await sub.fetch(5, timeout=10)
        for message in messages[:3]:  # batch 1 (seqs 1-3) confirmed; batch 2 (4-5) not
            await message.ack_sync()
        kv = await js.create_key_value(bucket="chworkers")
        store = ManifestStore(kv, "ev.chworkers", ttl=3600, where="test")
        assert not await store.register(Manifest("t1", [[1, 3]], created=time.time()), floor=0)
        assert not await store.register(Manifest("t2", [[4, 5]], created=time.time()), floor=0)

    nats_server.run(settle)
    line = describe(NatsSourceSettings(url=nats_server.url, stream="ev"), "pipeline 'q'")
    assert "consumer chworkers: 2 pending" in line, line
    assert line.endswith("; 1 manifest of batches in flight in bucket chworkers"), line
