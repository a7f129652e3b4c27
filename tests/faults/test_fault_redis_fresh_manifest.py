"""The manifest's cheap check (a batch of new entries: only its ends looked up) must never
let a batch hold an entry that is no longer its consumer's.

Looking up every id of a batch was most of what Redis spent on a manifest, so a batch of
entries this consumer read new skips it when nobody can have claimed them since
(redisscripts.WRITE_MANIFEST says why). Each case below breaks one of the conditions
that argument rests on, and the manifest must be refused as before the shortcut: an
entry claimed by a consumer that did not announce its claim_idle (a daemon of an older
version), by one that announced a short claim_idle, or an entry of the batch no longer
pending (a failover that lost its delivery).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from brokerfeeds import bodies
from redisserver import RedisServer

from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisclient import describe
from chworkers.daemon.brokers.redisgroup import StreamGroup

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def group(redis_server: RedisServer) -> Iterator[StreamGroup]:
    redis_server.add_entries(bodies(0, 100, 1))
    options = RedisSourceSettings(url=redis_server.url, stream="ev", claim_idle=30)
    me = StreamGroup(options, "me", "test")
    try:
        me.create()
        me.announce()
        yield me
    finally:
        me.close()


def read(group: StreamGroup, count: int = 100) -> list[str]:
    return [m.id for m in group.read(">", count)]


def test_a_batch_of_new_entries_skips_the_lookup(group: StreamGroup) -> None:
    ids = read(group)
    assert group.verdict(group.send_manifest("t1", ids, fresh=True)) is None
    assert group.checks == {"fresh": 1}
    # A batch with claimed or re-read entries is looked up whole.
    assert group.verdict(group.send_manifest("t2", ids[:10], fresh=False)) is None
    assert group.checks == {"fresh": 1, "all": 1}


def test_an_entry_claimed_by_a_consumer_that_did_not_announce_itself(
    group: StreamGroup, redis_server: RedisServer
) -> None:
    ids = read(group)
    client = redis_server.client()
    try:
        # An older daemon claims at once what it thinks idle (its own claim_idle).
        assert client.xclaim("ev", "chworkers", "old", 0, [ids[50]], justid=True)
    finally:
        client.close()
    assert group.verdict(group.send_manifest("t", ids, fresh=True)) == ids[50]
    assert group.checks == {}


def test_an_entry_claimed_by_a_consumer_with_a_short_claim_idle(
    group: StreamGroup, redis_server: RedisServer
) -> None:
    other = StreamGroup(
        RedisSourceSettings(url=redis_server.url, stream="ev", claim_idle=0.05), "other", "t"
    )
    try:
        other.announce()
        ids = read(group)
        time.sleep(0.2)  # idle past the other's claim_idle
        _, claimed = other.claim(ids[50], 1)  # XAUTOCLAIM from there: one entry
        assert [m.id for m in claimed] == [ids[50]]
    finally:
        other.close()
    assert group.verdict(group.send_manifest("t", ids, fresh=True)) == ids[50]
    assert group.checks == {}


def test_the_highest_entry_no_longer_pending(group: StreamGroup, redis_server: RedisServer) -> None:
    """A failover or a restart can lose the last writes: the delivery of a batch's last
    entry among them (Redis loses a suffix of what it did, so the highest id's delivery
    with any after the lowest's). An acknowledgement stands in for the loss."""
    ids = read(group)
    client = redis_server.client()
    try:
        client.xack("ev", "chworkers", ids[-1])
    finally:
        client.close()
    assert group.verdict(group.send_manifest("t", ids, fresh=True)) == ids[-1]
    assert group.checks == {}


def test_the_lowest_entry_claimed_again_by_its_own_consumer(
    group: StreamGroup, redis_server: RedisServer
) -> None:
    """Its idle time then tells since when this consumer holds it again, not since it
    was read: the others were idle for longer, and one may have been claimed."""
    other = StreamGroup(
        RedisSourceSettings(url=redis_server.url, stream="ev", claim_idle=0.05), "other", "t"
    )
    client = redis_server.client()
    try:
        other.announce()
        ids = read(group)
        time.sleep(0.2)
        other.claim(ids[50], 1)
        # This consumer's own claim of its lowest entry (a delivery: counted).
        assert client.xclaim("ev", "chworkers", "me", 0, [ids[0]])
    finally:
        other.close()
        client.close()
    assert group.verdict(group.send_manifest("t", ids, fresh=True)) == ids[50]
    assert group.checks == {}


def test_check_names_the_consumers_that_hold_the_shortcut_off(
    group: StreamGroup, redis_server: RedisServer
) -> None:
    """A consumer that once read the group stays in it until deleted: `chworkers check`
    says which ones keep every manifest looked up whole, so an operator can see why."""
    options = RedisSourceSettings(url=redis_server.url, stream="ev")
    read(group, 10)
    line = describe(options, "test")
    assert line.endswith("group chworkers: 1 consumer, 10 pending, lag 90"), line
    client = redis_server.client()
    try:
        client.xreadgroup("chworkers", "by-hand", {"ev": ">"}, count=1)
    finally:
        client.close()
    line = describe(options, "test")
    assert "2 consumers, 11 pending, lag 89; 1 consumer not announced (by-hand: " in line, line
