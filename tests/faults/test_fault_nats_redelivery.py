"""A daemon reading a JetStream stream killed with ``kill -9`` mid-batch (issue 13).

Its manifests are written, its inserts hang on a slow ClickHouse, its messages are
delivered and not acknowledged. JetStream redelivers them to another daemon on the same
consumer after ``ack_wait``, which must rebuild each batch from its manifest with the
same token and land everything exactly once: rows sent == rows in ClickHouse == distinct
ids, nothing pending, no manifest of a pending batch left.
"""

from __future__ import annotations

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
    return broker_pipeline("nats", {"url": server.url, "stream": "ev", "ack_wait": 2.0})


def test_a_killed_daemons_batches_are_redelivered_and_land_once(
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
        target.slow(3.0)  # inserts hang: manifests written, batches in flight
        nats_server.publish(broker_bodies(0, 20_000, "nats"))
        assert wait_until(lambda: nats_server.consumer_state()[2] >= 3, 60, "manifests written"), (
            a.tail()
        )
        a.kill9(group=True)
        assert nats_server.consumer_state()[1] > 0, "the killed daemon held no messages"
        target.up()
        b.start()
        nats_server.publish(broker_bodies(20_000, 30_000, "nats"))
        assert wait_until(nats_server.settled, 120, "every message acknowledged"), b.tail()
        assert target.rows_and_ids() == (30_000, 30_000), b.tail()
        assert "rebuilding batch" in b.log(), b.tail()
        b.terminate(within=40)
    finally:
        a.close()
        b.close()
