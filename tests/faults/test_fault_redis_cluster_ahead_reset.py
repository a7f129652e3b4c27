"""In a cluster, a MOVED met by another thread must not drop the source's read sent ahead.

The source's thread sends its next XREADGROUP before it takes the last one's entries, on
a connection of its own. Every thread of the daemon translated Redis's errors through one
function, which in a cluster dropped that connection on MOVED and the like: when the
completion thread's acknowledgement met the stream's slot moving, the reply of the read
sent ahead was lost (its entries pending until a claim, claim_idle later), and a source
thread reading from that connection at that moment failed on a connection gone from
under it. Only the source's own thread drops it now, when it meets the move itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from brokerfeeds import bodies
from redisserver import RedisClusterServers, RedisUnavailable

from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisclient import entry_order
from chworkers.daemon.brokers.redisgroup import StreamGroup
from chworkers.errors import BrokerError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    try:
        servers = RedisClusterServers(tmp_path / "cluster")
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def test_an_acknowledgement_meeting_moved_keeps_the_read_sent_ahead(
    cluster: RedisClusterServers,
) -> None:
    client = cluster.client()
    try:
        for body in bodies(0, 300, 1):
            client.xadd("ev", {"data": body})
    finally:
        client.close()
    group = StreamGroup(
        RedisSourceSettings(url=cluster.url, stream="ev", cluster=True), "me", "test"
    )
    try:
        group.create()
        first = group.read_new(100, 100, list)  # a full reply: the next read is sent ahead
        assert len(first) == 100 and group.reading_ahead()
        cluster.move_slot("ev", (cluster.serving("ev") + 1) % cluster.primaries)
        ids = [entry[0].decode() for entry in first]
        with pytest.raises(BrokerError, match="MovedError"):
            group.complete(ids, "")  # the completion thread's acknowledgement
        # The read sent ahead ran before the move: its entries are this consumer's, and
        # its reply is still there to take.
        ahead = group.take_ahead()
        assert len(ahead) == 100 and entry_order(ahead[0][0].decode()) > entry_order(ids[-1])
    finally:
        group.close()


def test_a_manifest_meeting_tryagain_keeps_the_read_sent_after_it(
    cluster: RedisClusterServers,
) -> None:
    """TRYAGAIN (a script whose keys are half migrated) leaves the connection in step and
    pointed at the right node: the read sent after the manifest was served, and its
    reply (entries now pending for this consumer) must not be dropped with the
    connection."""
    client = cluster.client()
    try:
        for body in bodies(0, 300, 1):
            client.xadd("ev", {"data": body})
    finally:
        client.close()
    group = StreamGroup(
        RedisSourceSettings(url=cluster.url, stream="ev", cluster=True), "me", "test"
    )
    source = cluster.serving("ev")
    target = (source + 1) % cluster.primaries
    try:
        group.create()
        group.announce()  # a key beside the stream, in its slot
        first = group.read_new(100, 100, list)  # a full reply: the next read is sent ahead
        ids = [entry[0].decode() for entry in first]
        cluster.begin_move("ev", target)
        cluster.migrate([group.consumers_key.encode()], source, target)
        sent = group.send_manifest("t", ids, fresh=True)  # TRYAGAIN: a key has moved
        second = group.read_new(100, 100, list)  # the read ahead taken, the next sent after M
        assert len(second) == 100 and group.reading_ahead()
        with pytest.raises(BrokerError, match="TryAgainError"):
            group.verdict(sent)
        assert len(group.take_ahead()) == 100
        cluster.end_move("ev", source, target)
    finally:
        group.close()
