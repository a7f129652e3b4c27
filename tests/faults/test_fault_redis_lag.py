"""The lag gauge of a Redis source after a Redis restart (issue 13).

A kill -9 run with a Redis restart ended with every entry delivered, acknowledged and in
ClickHouse, and Redis 7.0 still reporting a lag of 126,705 for the group (its own count
of ``entries-read`` went wrong across the restart) for minutes: the source's
``chworkers_broker_lag_entries`` showed it, and ``ChworkersBrokerLag`` would fire for a
group that was caught up. A group whose last delivered entry is the stream's last one
now has a lag of 0. The test makes Redis's count wrong on purpose (``XGROUP SETID ...
ENTRIESREAD``), as the restart did.
"""

from __future__ import annotations

import pytest
from redisserver import RedisServer

from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisgroup import StreamGroup

pytestmark = pytest.mark.timeout(60)


def test_a_group_that_read_the_whole_stream_has_no_lag(redis_server: RedisServer) -> None:
    client = redis_server.client()
    group = StreamGroup(RedisSourceSettings(url=redis_server.url, stream="ev"), "me", "test")
    try:
        for i in range(10):
            client.xadd("ev", {"data": f'{{"n":{i}}}'})
        group.create()
        assert group.state() == (0, 10)
        client.execute_command("XGROUP", "SETID", "ev", "chworkers", "$", "ENTRIESREAD", 3)
        assert client.xinfo_groups("ev")[0]["lag"] == 7  # what Redis says
        assert group.state() == (0, 0)
        client.xadd("ev", {"data": '{"n":10}'})  # behind again: Redis's count is all we have
        assert group.state() == (0, 8)
    finally:
        group.close()
        client.close()
