"""The Redis source's commands (chworkers/daemon/brokers/redisgroup.py) against a real
redis-server: what the heartbeat's refresh touches, and what it leaves alone."""

from __future__ import annotations

import json
import time

import pytest
from redisserver import RedisServer

from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisgroup import StreamGroup, ids_json

pytestmark = pytest.mark.timeout(120)


def idle(server: RedisServer, consumer: str) -> dict[str, tuple[int, int]]:
    """id -> (idle ms, deliveries) of ``consumer``'s pending entries."""
    client = server.client()
    try:
        entries = client.xpending_range(
            "ev", "chworkers", "-", "+", count=100_000, consumername=consumer
        )
    finally:
        client.close()
    return {
        e["message_id"].decode(): (e["time_since_delivered"], e["times_delivered"]) for e in entries
    }


def test_ids_travel_as_json() -> None:
    assert json.loads(ids_json(["1-0", "1700000000000-12"])) == ["1-0", "1700000000000-12"]
    assert json.loads(ids_json([])) == []


def test_touch_refreshes_only_this_consumers_entries_of_the_batches(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    pipe = client.pipeline(transaction=False)
    for i in range(3000):
        pipe.xadd("ev", {"data": f'{{"n":{i}}}'})
    pipe.execute()
    options = RedisSourceSettings(url=redis_server.url, stream="ev")
    mine, theirs = StreamGroup(options, "a", "test"), StreamGroup(options, "b", "test")
    try:
        mine.create()
        ours = [m.id for m in mine.read(">", 2000)]
        others = [m.id for m in theirs.read(">", 1000)]
        time.sleep(0.3)
        # One batch of consecutive ids, one of two ids 1,999 apart (the range holds more
        # of our entries than the script asks XPENDING for: looked up one by one), and
        # ids of another consumer, which must stay its own.
        touched = [*ours[:500], ours[600], ours[-1]]
        mine.touch([ours[:500], [ours[600], ours[-1]], others[:10]])
        after = idle(redis_server, "a")
        for entry_id in touched:
            assert after[entry_id][0] < 250, (entry_id, after[entry_id])
            assert after[entry_id][1] == 1  # a refresh is not a delivery
        for entry_id in ours[500:600] + ours[601:-1]:
            assert after[entry_id][0] >= 300
        assert set(idle(redis_server, "b")) == set(others)
        assert min(v[0] for v in idle(redis_server, "b").values()) >= 300
        mine.touch([])  # nothing in flight: no command at all
    finally:
        mine.close()
        theirs.close()
        client.close()
