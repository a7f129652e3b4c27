"""A NATS pipeline's batches skip the disk, as Redis ones do (issue 13, docs/brokers.md
"The local spool").

They used to be written to the fsync'd spool: a write and a read of every byte for no
durability (JetStream holds the messages until they are acknowledged, and the manifest
rebuilds the batch), and a stale copy that a restarted daemon replayed, inserting it a
second time (dropped by its token) while the same batch was rebuilt from its redelivered
messages. Now they wait in the spool's memory tier: a daemon killed while ClickHouse does
not answer leaves no batch file behind, and after its restart its batches are rebuilt
from their manifests once JetStream redelivers their messages: every row exactly once,
nothing replayed from the disk.
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


def consumer_made(server: NatsServer) -> bool:
    try:
        server.consumer_state()
    except Exception:
        return False
    return True


def test_a_killed_daemon_left_no_nats_batch_on_disk_and_rebuilds_them(
    tmp_path: Path, endpoint: Any, database: str, fault_proxy: Any, nats_server: NatsServer
) -> None:
    target = ProxiedClickHouse(endpoint, database, fault_proxy)
    nats_server.make_stream()
    broker = {"url": nats_server.url, "stream": "ev", "ack_wait": 2.0}
    pipeline = broker_pipeline("nats", broker, max_rows=1000)
    config = base_config(tmp_path / "state", target.daemon_url, [pipeline])
    daemon = DaemonUnderTest(tmp_path, config, target)
    try:
        daemon.start()
        assert wait_until(lambda: consumer_made(nats_server), 60, "the consumer"), daemon.tail()
        target.rows_and_ids()  # answers: the daemon created the table
        target.down()
        nats_server.publish(broker_bodies(0, 5000, "nats"))
        assert wait_until(lambda: nats_server.consumer_state()[2] >= 3, 60, "manifests"), (
            daemon.tail()
        )
        assert not list((tmp_path / "state" / "spool").glob("*.batch")), "a broker batch on disk"
        daemon.kill9(group=True)
        assert nats_server.consumer_state()[1] > 0, "the killed daemon held no messages"
        target.up()
        daemon.start()  # the same state directory
        assert wait_until(nats_server.settled, 120, "every message acknowledged"), daemon.tail()
        assert target.rows_and_ids() == (5000, 5000), daemon.tail()
        assert "rebuilding batch" in daemon.log(), daemon.tail()
        assert "replaying" not in daemon.log()  # nothing came back from the spool
        daemon.terminate(within=40)
    finally:
        daemon.close()
