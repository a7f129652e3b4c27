"""``ack_policy = "all"``: one ``+ACK`` acknowledges every message up to it, whichever
daemon holds them (natsprefix.py). Two daemons read one stream at once, their inserts
slowed so that each holds batches in flight (manifests written, inserts not confirmed)
and messages pulled into a batch in the making; one is killed with ``kill -9``. The
other's acknowledgements must never have passed what the killed one held: its messages
are redelivered, its batches rebuilt with their tokens, and everything lands exactly
once: rows sent == rows in ClickHouse == distinct ids, nothing pending.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from drillbase import wait_until
from drilldaemon import DaemonUnderTest
from drillfeeds import broker_bodies
from drilltargets import ProxiedClickHouse
from harness import base_config, broker_pipeline
from natsserver import NatsServer

pytestmark = pytest.mark.timeout(300)


def pipeline(server: NatsServer) -> dict[str, Any]:
    options = {"url": server.url, "stream": "ev", "ack_wait": 2.0, "ack_policy": "all"}
    return broker_pipeline("nats", options)


def test_a_killed_daemons_messages_are_not_acknowledged_by_the_other(
    tmp_path: Path, endpoint: Any, database: str, fault_proxy: Any, nats_server: NatsServer
) -> None:
    target = ProxiedClickHouse(endpoint, database, fault_proxy)
    nats_server.make_stream()

    def make(name: str) -> DaemonUnderTest:
        (tmp_path / name).mkdir()
        config = base_config(tmp_path / name / "state", target.daemon_url, [pipeline(nats_server)])
        return DaemonUnderTest(tmp_path / name, config, target)

    a, b = make("a"), make("b")
    try:
        a.start()
        b.start()
        target.slow(1.0)  # inserts take a second: both daemons hold batches in flight
        nats_server.publish(broker_bodies(0, 20_000, "nats"))
        assert wait_until(lambda: nats_server.consumer_state()[2] >= 4, 60, "manifests written"), (
            a.tail()
        )
        time.sleep(1.5)  # some batches of each inserted and settled, others in flight
        a.kill9(group=True)
        assert nats_server.consumer_state()[1] > 0, "nothing pending when the daemon died"
        target.up()
        nats_server.publish(broker_bodies(20_000, 30_000, "nats"))
        assert wait_until(nats_server.settled, 120, "every message acknowledged"), b.tail()
        assert target.rows_and_ids() == (30_000, 30_000), b.tail()
        b.terminate(within=40)
    finally:
        a.close()
        b.close()
