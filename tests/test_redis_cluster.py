"""``source = "redis"`` with ``cluster = true`` against a real three-node Redis Cluster
(tests/redisserver.py's RedisClusterServers): the keys beside the stream share its hash
slot, so the manifests' scripts run; a poison entry, a claimed batch of a vanished
consumer and the heartbeat's refresh all go through the cluster client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonthread import Running, count, daemon_config
from redisserver import RedisClusterServers, RedisUnavailable
from waiting import wait_for

from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisclient import describe, has_hash_tag, key_prefix
from chworkers.daemon.brokers.redisgroup import StreamGroup
from chworkers.embedded import EmbeddedClickHouse

pytestmark = [
    pytest.mark.timeout(300),
    # The source's threads must not die on what the cluster client raises.
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    try:
        cluster = RedisClusterServers(tmp_path / "cluster")
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_the_keys_beside_the_stream_share_its_slot() -> None:
    def prefix(stream: str, cluster: bool) -> str:
        return key_prefix(RedisSourceSettings(stream=stream, cluster=cluster))

    assert prefix("ev", False) == "ev:chworkers:chworkers"  # as before: no key moves
    assert prefix("ev", True) == "{ev}:chworkers:chworkers"
    assert prefix("{app}.ev", True) == "{app}.ev:chworkers:chworkers"  # its own tag
    assert prefix("a{}b", True) == "{a{}b}:chworkers:chworkers"  # an empty tag is none
    assert [has_hash_tag(k) for k in ("x", "{x}", "{}x", "a{b", "a{b}c")] == [
        False,
        True,
        False,
        False,
        True,
    ]


def settled(client: Any) -> bool:
    groups = client.xinfo_groups("ev")
    return all(g["pending"] == 0 and g["lag"] == 0 for g in groups) and not client.keys(
        "{ev}:chworkers:*:manifest*", target_nodes="all"
    )


def test_a_daemon_reads_a_stream_of_a_cluster_exactly_once(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    redis_cluster: RedisClusterServers,
) -> None:
    client = redis_cluster.client()
    options = {"url": redis_cluster.url, "stream": "ev", "cluster": True}
    # A consumer that read entries, wrote its manifest and vanished: the daemon claims
    # them and rebuilds the batch with its token, through the cluster client.
    for i in range(0, 300, 10):
        client.xadd("ev", {"data": "".join(f'{{"n":{n},"s":"r{n}"}}\n' for n in range(i, i + 10))})
    gone = StreamGroup(RedisSourceSettings(**options), "vanished", "test")
    gone.create()
    read = [m.id for m in gone.read(">", 10)]
    assert gone.verdict(gone.send_manifest("chw-redis-gone", read, fresh=True)) is None
    assert client.exists("{ev}:chworkers:chworkers:manifest:chw-redis-gone")
    gone.close()
    client.xadd("ev", {"other": "poison: no data field"})
    pipeline = {
        "source": "redis",
        "max_rows": 500,
        "redis": {**options, "claim_idle": 1.0, "claim_interval": 0.2, "fetch_count": 50},
    }
    daemon = Running(daemon_config(tmp_path / "state", f"{endpoint.url}/{database}", pipeline))
    try:
        for i in range(300, 5000, 10):
            client.xadd(
                "ev", {"data": "".join(f'{{"n":{n},"s":"r{n}"}}\n' for n in range(i, i + 10))}
            )
        wait_for(lambda: settled(client), 120, interval=0.2, what="all entries acked")
        line = describe(RedisSourceSettings(**options), "test")  # `chworkers check`
        assert "group chworkers: 2 consumers, 0 pending" in line, line  # the vanished one too
        assert "; 1 consumer not announced (vanished: " in line, line
    finally:
        daemon.stop()
        client.close()
    assert count(endpoint, database) == (5000, 5000)
