"""Broker pipelines (Redis, NATS) into a sharded cluster: three embedded endpoints as three
shards, a real redis-server / nats-server (docs/sharding.md, docs/brokers.md).

A broker batch is split by key into one part per shard in the spool's memory tier; each
shard must hold exactly the rows a Distributed table with the same key and weights would
have sent it (checked by ClickHouse's own evaluation of the key on each shard), every
row exactly once; the batch is acknowledged (its manifest removed) only once every part
is confirmed, so a shard that is down holds back its own parts and the batch's messages
stay pending in the broker, while the other shards take theirs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from chclients import make_client
from clirun import run_chworkers
from daemonthread import Running
from faultproxy import FaultProxy
from redisserver import RedisServer
from shardrows import KEY, Broker, each_row_once, held, sharded_config
from waiting import wait_for

from chworkers.daemon.brokergroups import BrokerGroups
from chworkers.daemon.spool import PartSpec, Spool, SpooledBatch
from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(params=["redis", "nats"])
def broker(request: pytest.FixtureRequest) -> Broker:
    server = request.getfixturevalue(f"{request.param}_server")
    return Broker(request.param, server)


def test_a_broker_batch_is_split_by_key_over_three_shards_exactly_once(
    tmp_path: Path,
    shard_endpoints: tuple[EmbeddedClickHouse, ...],
    shard_database: str,
    broker: Broker,
) -> None:
    broker.add(0, 6000)
    cfg = sharded_config(
        tmp_path / "state",
        [ch.url for ch in shard_endpoints],
        shard_database,
        broker.kind,
        broker.options(),
    )
    running = Running(cfg)
    try:
        broker.add(6000, 12_000)
        wait_for(lambda: running.daemon.totals.rows_inserted >= 12_000, 120, what="rows")
        wait_for(broker.settled, 60, interval=0.2, what="all entries acknowledged")
    finally:
        running.stop()
    counts = each_row_once(shard_endpoints, shard_database, 12_000)
    assert counts[1][0] > counts[0][0] and counts[1][0] > counts[2][0]  # by weight
    assert running.daemon.broker_groups.held_back("p") == 0


def test_a_shard_down_holds_back_only_its_parts_and_their_batches_stay_pending(
    tmp_path: Path,
    shard_endpoints: tuple[EmbeddedClickHouse, ...],
    shard_database: str,
    broker: Broker,
) -> None:
    a, b, c = shard_endpoints
    proxy = FaultProxy((c.host, c.port))  # shard 2's only replica
    cfg = sharded_config(
        tmp_path / "state", [a.url, b.url, proxy.url], shard_database, broker.kind, broker.options()
    )
    try:
        running = Running(cfg)
        try:
            broker.add(0, 2000)
            wait_for(lambda: running.daemon.totals.rows_inserted == 2000, 120, what="rows")
            wait_for(broker.settled, 60, interval=0.2, what="all entries acknowledged")
            before = [held(shard_endpoints, i, shard_database)[0] for i in range(3)]
            proxy.set("reset")  # shard 2 goes down
            broker.add(2000, 8000)
            # The other shards take their rows (more batches than the source's default
            # max_batches: those waiting only for shard 2 do not hold the source back).
            wait_for(
                lambda: (
                    sum(held(shard_endpoints, i, shard_database)[0] for i in (0, 1))
                    > sum(before[:2]) + 0.6 * 6000 * 3 / 4
                ),
                120,
                interval=0.2,
                what="shards 0 and 1 going on",
            )
            assert held(shard_endpoints, 2, shard_database)[0] == before[2]
            # The batches with a part for shard 2 are not acknowledged: pending in the
            # broker, held by this daemon (in-progress notes, refreshed idle time) for
            # longer than ack_wait / claim_idle (2 s).
            assert broker.unacknowledged() > 0
            assert running.daemon.broker_groups.held_back("p") > 0
            assert running.daemon.dispatcher.shard_backlog()[2] > 0
            time.sleep(3)
            redelivered = running.daemon.metrics.broker_redeliveries.labels(pipeline="p")
            assert redelivered._value.get() == 0
            # Its parts are counted in the shard's backlog, and health names the shard.
            problems = [p.reason for p in running.daemon.health().problems]
            assert any("shard 2" in p and "held back" in p for p in problems), problems
            # Every entry read and shards 0 and 1 done: only shard 2's parts are left.
            wait_for(lambda: running.daemon.dispatcher.shard_backlog()[:2] == [0, 0], 60)
            running.daemon._publish_shards()  # as a scrape would
            registry = running.daemon.metrics.registry
            backlog = registry.get_sample_value("chworkers_shard_backlog_batches", {"shard": "2"})
            assert backlog is not None and backlog > 0
            assert registry.get_sample_value("chworkers_shard_backlog_batches", {"shard": "0"}) == 0
            proxy.set("pass")  # back: its parts go, and the batches are acknowledged
            wait_for(broker.settled, 120, interval=0.2, what="all entries acknowledged")
            wait_for(lambda: running.daemon.totals.rows_inserted == 8000, 60, what="rows")
        finally:
            running.stop()
    finally:
        proxy.close()
    each_row_once(shard_endpoints, shard_database, 8000)


def test_a_memory_batch_is_replaced_by_its_parts_in_memory(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    meta = {"broker": {"kind": "redis", "token": "tok", "ids": ["1-0", "2-0"]}}
    whole = spool.put("ev", b"a\nb\nc\n", format="TSV", rows=3, meta=meta, memory=True, token="tok")
    used = spool.memory.used()
    parts = spool.replace(
        whole,
        [
            PartSpec(b"a\nc\n", 2, "tok@shard0", {"shard": 0}),
            PartSpec(b"b\n", 1, "tok@shard2", {"shard": 2}),
        ],
    )
    assert not list((tmp_path / "spool").glob("*.batch"))  # nothing on disk
    assert spool.memory.get(whole.seq) is None and spool.memory.batches() == 2
    assert spool.memory.used() <= used  # the parts take the whole's place
    assert [spool.load(p).payload for p in parts] == [b"a\nc\n", b"b\n"]
    assert [p.meta["group"] for p in parts] == [whole.seq] * 2
    assert all(p.meta["broker"]["token"] == "tok" for p in parts)  # the whole's manifest


def test_a_split_broker_batch_is_acknowledged_after_its_last_part() -> None:
    groups = BrokerGroups()
    whole = SpooledBatch(
        1, "ev", "TSV", 3, "tok", 0.0, b"", pipeline="p", meta={"broker": {"token": "tok"}}
    )
    parts = [
        dataclasses.replace(whole, seq=seq, meta={**whole.meta, "group": 1, "shard": shard})
        for seq, shard in ((2, 0), (3, 2))
    ]
    groups.split(whole, parts)
    assert groups.held_back("p") == 0
    assert groups.confirmed(parts[0]) is None  # shard 2's part waits: not acknowledged
    assert groups.held_back("p") == 1
    assert groups.confirmed(parts[0]) is None  # the same part again: the same answer
    done = groups.confirmed(parts[1])
    assert done is not None and done.seq == 1 and done.token == "tok"
    assert groups.confirmed(parts[1]) == done  # its acknowledgement failed: tried again
    groups.acknowledged(done)
    assert groups.held_back("p") == 0
    assert groups.confirmed(whole) is whole  # a batch that was not split: itself


def test_check_reports_the_broker_and_every_shard(
    tmp_path: Path,
    shard_endpoints: tuple[EmbeddedClickHouse, ...],
    shard_database: str,
    redis_server: RedisServer,
) -> None:
    for ch in shard_endpoints:
        client = make_client(ch, database=shard_database)
        client.command("CREATE TABLE ev (n UInt64, s String) ENGINE = MergeTree ORDER BY n")
        client.close()
    redis_server.add_entries([b'{"n":1,"s":"a"}\n'])
    shards = ", ".join(f'["{ch.url}"]' for ch in shard_endpoints)
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"""
[clickhouse]
shards = [{shards}]
database = "{shard_database}"
[[pipelines]]
name = "p"
table = "ev"
source = "redis"
sharding_key = "{KEY}"
[pipelines.redis]
url = "{redis_server.url}"
stream = "ev"
"""
    )
    result = run_chworkers("check", "-c", str(conf))
    out = result.stdout
    assert "pipeline p: stream ev: 1 entries" in out, out + result.stderr
    assert out.count(f"ev exists (sharding key {KEY} fits its columns)") == 3, out
    assert result.returncode == 0, out + result.stderr


@pytest.mark.parametrize("key", ["n", "random"])
def test_unreadable_keys_are_dead_lettered_and_random_batches_go_whole(
    tmp_path: Path,
    shard_endpoints: tuple[EmbeddedClickHouse, ...],
    shard_database: str,
    redis_server: RedisServer,
    key: str,
) -> None:
    """Under key ``n`` a batch whose every record has an unreadable key is acknowledged
    with nothing inserted (its records in the dead letters); under ``random`` each batch
    goes whole to one shard, picked by weight from its token."""
    broker = Broker("redis", redis_server)
    bad = [b'{"n":"seven","s":"x"}\n{"n":-1,"s":"y"}\n'] * 5
    redis_server.add_entries(bad if key == "n" else [])
    cfg = sharded_config(
        tmp_path / "state",
        [ch.url for ch in shard_endpoints],
        shard_database,
        "redis",
        broker.options(),
    )
    cfg["pipelines"][0].update(sharding_key=key, max_rows=200)
    running = Running(cfg)
    try:
        wait_for(broker.settled, 60, interval=0.2, what="the bad entries acknowledged")
        broker.add(0, 3000)
        wait_for(lambda: running.daemon.totals.rows_inserted >= 3000, 120, what="rows")
        wait_for(broker.settled, 60, interval=0.2, what="all entries acknowledged")
    finally:
        running.stop()
    counts = each_row_once(shard_endpoints, shard_database, 3000, on_its_shard=False)
    letters = [
        json.loads(line)
        for path in (tmp_path / "state" / "dead-letter").rglob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    if key == "n":
        assert len(letters) == 10 and {x["reason"] for x in letters} == {"sharding_key"}
    else:
        assert letters == []
        assert sum(1 for n, _, _ in counts if n) >= 2, counts  # 15 batches or more, spread
