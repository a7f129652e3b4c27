"""A broker batch split by shard is acknowledged only when all its parts are confirmed.

Broker pipelines were refused with a sharding key (session 4): a split broker batch lost
rows, because the first part to be confirmed acknowledged the whole batch (its entries
XACKed, its manifest removed) while another shard had not written its part; a daemon
that died then left that part nowhere. Now each part is confirmed on its own and the
batch is acknowledged after the last: with one shard down, its batches stay pending in
the broker, their manifests kept; a daemon killed -9 meanwhile rebuilds them at its
next start, splits them again into the same parts with the same tokens, and the shards
that had their part drop it as a duplicate: every row exactly once, on its key's shard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from drillbase import wait_until
from drilldaemon import DaemonUnderTest
from drilltargets import ProxiedClickHouse
from faultproxy import FaultProxy
from harness import base_config
from shardrows import Broker, each_row_once, held, sharded_config

from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("kind", ["redis", "nats"])
def test_a_daemon_killed_with_a_shard_down_loses_and_doubles_nothing(
    tmp_path: Path,
    shard_endpoints: tuple[EmbeddedClickHouse, ...],
    shard_database: str,
    kind: str,
    request: pytest.FixtureRequest,
) -> None:
    broker = Broker(kind, request.getfixturevalue(f"{kind}_server"))
    a, b, c = shard_endpoints
    proxy = FaultProxy((c.host, c.port))  # shard 2's only replica
    config: dict[str, Any] = sharded_config(
        tmp_path / "state", [a.url, b.url, proxy.url], shard_database, kind, broker.options()
    )
    drill = base_config(tmp_path / "state", "", config["pipelines"])
    config["supervisor"] = drill["supervisor"]
    config["spool"] = {**drill["spool"], "fsync": False}
    daemon = DaemonUnderTest(tmp_path, config, ProxiedClickHouse(c, shard_database, proxy))
    try:
        daemon.start()
        broker.add(0, 1000)
        assert wait_until(broker.settled, 120, "the first entries in"), daemon.tail()
        proxy.set("reset")  # shard 2 goes down
        broker.add(1000, 5000)
        assert wait_until(
            lambda: (
                held(shard_endpoints, 0, shard_database)[0]
                + held(shard_endpoints, 1, shard_database)[0]
                >= 0.5 * 5000 * 3 / 4
            ),
            120,
            "shards 0 and 1 going on",
        ), daemon.tail()
        # Their batches are written on shards 0 and 1, and not acknowledged: shard 2 has
        # not confirmed its parts. (Before, the first part acknowledged the batch.)
        assert broker.unacknowledged() > 0, daemon.tail()
        assert not broker.settled()
        daemon.kill9(group=True)
        proxy.set("pass")
        daemon.start()  # the same state directory: the same consumer
        assert wait_until(broker.settled, 120, "every entry acknowledged"), daemon.tail()
        daemon.terminate(within=40)
    finally:
        daemon.close()
        proxy.close()
    each_row_once(shard_endpoints, shard_database, 5000)  # no part twice
