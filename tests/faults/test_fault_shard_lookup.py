"""A shard that is down must not block the producer of an insert bound for it.

Native encoding needs the table's columns. A sharded supervisor that already knows them
(a sharding-key insert looked them up on a shard that answered) used to look them up
again, on the insert's own shard, for every new set of column names: with that shard
down, ``insert(..., shard=i)`` sat in the caller's thread for the lookup's whole retry
budget (bounded only by ``boot_timeout``). Now the columns it knows serve any subset.
"""

from __future__ import annotations

import socket

import pytest
from chclients import make_client

from chworkers import EmbeddedClickHouse, Supervisor

pytestmark = pytest.mark.timeout(60)


def test_an_insert_for_a_shard_that_is_down_returns_at_once(
    endpoint: EmbeddedClickHouse, database: str
) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    client = make_client(endpoint, database=database)
    client.command("CREATE TABLE t (x UInt64, y String) ENGINE = MergeTree ORDER BY x")
    with Supervisor(
        f"{endpoint.url}/{database}",
        shards=[[endpoint.url], [dead]],
        workers=2,
        max_connections=1,
        start_method="fork",
        boot_timeout=3600,  # the old lookup would wait this long: past the test's timeout
        retry={"max_attempts": 10**6, "initial_backoff": 0.05, "max_backoff": 0.1},
    ) as sup:
        # x = 0 routes to shard 0, which answers: the table's columns are known from now on.
        assert sup.insert("t", [{"x": 0, "y": "a"}], sharding_key="x").result(30) == 1
        stuck = sup.insert("t", [(1,)], ["x"], shard=1)  # returns: no lookup on shard 1
        assert sup.insert("t", [(2, "b")], ["x", "y"], shard=0).result(30) == 1
        assert not stuck.done()  # shard 1 is still down; its insert waits and retries
        sup.stop(graceful=False)
    assert sorted(client.query("SELECT x FROM t").result_rows) == [(0,), (2,)]
    client.close()
