"""`chworkers run` into a sharded cluster: three embedded endpoints as three shards.

Each shard must hold exactly the rows a Distributed table with the same key and weights
would have sent it (checked by ClickHouse's own evaluation of the key on each shard),
every row exactly once; a shard that is down holds back only its own parts.
"""

from __future__ import annotations

import functools
import http.client
import json
import random
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import waiting
from chclients import make_client
from daemonthread import Running
from faultproxy import FaultProxy
from shardrows import WEIGHTS, cluster_config

from chworkers.embedded import EmbeddedClickHouse

wait_for = functools.partial(waiting.wait_for, timeout=90.0, interval=0.1)

KEY = "sipHash64(user)"


def shard_config(
    state: Path, shards: list[list[str]], database: str, pipeline: dict[str, Any]
) -> dict[str, Any]:
    return cluster_config(
        state,
        shards,
        database,
        {
            "create": "id UInt64, user String",
            "engine": "MergeTree ORDER BY id",
            "max_delay": "100ms",
            "max_rows": 2_000,
            "sharding_key": KEY,
            **pipeline,
        },
    )


def rows(start: int, stop: int) -> bytes:
    rng = random.Random(start)
    return b"".join(
        json.dumps({"id": i, "user": f"user-{rng.randrange(100_000)}"}).encode() + b"\n"
        for i in range(start, stop)
    )


def samples(running: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The daemon's metrics, as its registry has them (also once it stopped)."""
    registry = running.daemon.metrics.registry
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def held(ch: EmbeddedClickHouse, database: str) -> tuple[int, int, int]:
    """Rows, distinct ids, and rows a Distributed table would NOT have sent here."""
    client = make_client(ch, database=database)
    try:
        return client.query("SELECT count(), uniqExact(id) FROM ev").result_rows[0]  # type: ignore[no-any-return]
    finally:
        client.close()


def misplaced(shards: tuple[EmbeddedClickHouse, ...], database: str) -> list[int]:
    """Per shard, the rows whose key ClickHouse evaluates to another shard's slots."""
    out = []
    total = sum(WEIGHTS)
    for index, ch in enumerate(shards):
        start = sum(WEIGHTS[:index])
        client = make_client(ch, database=database)
        try:
            out.append(
                int(
                    client.command(
                        f"SELECT count() FROM ev WHERE {KEY} % {total} NOT BETWEEN {start} "
                        f"AND {start + WEIGHTS[index] - 1}"
                    )
                )
            )
        finally:
            client.close()
    return out


@pytest.mark.timeout(240)
def test_a_file_is_split_by_key_over_three_shards_one_with_a_dead_replica(
    tmp_path: Path, shard_endpoints: tuple[EmbeddedClickHouse, ...], shard_database: str
) -> None:
    a, b, c = shard_endpoints
    dead = FaultProxy((b.host, b.port))  # shard 1's first replica is down all along
    dead.set("refuse")
    source = tmp_path / "in.json"
    source.write_bytes(rows(0, 20_000))
    cfg = shard_config(
        tmp_path / "state",
        [[a.url], [dead.url, b.url], [c.url]],
        shard_database,
        {"source": "file", "paths": [str(source)]},
    )
    try:
        running = Running(cfg)
        wait_for(lambda: running.daemon.totals.rows_inserted == 20_000)
        assert running.stop() == 0
        metrics = samples(running)
    finally:
        dead.close()
    counts = [held(ch, shard_database) for ch in shard_endpoints]
    assert sum(n for n, _ in counts) == 20_000
    assert all(n == distinct for n, distinct in counts)  # no duplicates
    assert all(n > 2000 for n, _ in counts)  # each shard has its share...
    assert counts[1][0] > counts[0][0] and counts[1][0] > counts[2][0]  # ...by weight
    assert misplaced(shard_endpoints, shard_database) == [0, 0, 0]
    for i, (n, _) in enumerate(counts):
        assert metrics[("chworkers_shard_rows_total", (("shard", str(i)),))] == n
    assert metrics[("chworkers_shard_replicas", (("shard", "1"),))] == 2


@pytest.mark.timeout(240)
def test_a_shard_down_mid_ingest_holds_back_only_its_own_rows(
    tmp_path: Path, shard_endpoints: tuple[EmbeddedClickHouse, ...], shard_database: str
) -> None:
    a, b, c = shard_endpoints
    proxy = FaultProxy((c.host, c.port))  # shard 2's only replica
    cfg = shard_config(
        tmp_path / "state",
        [[a.url], [b.url], [proxy.url]],
        shard_database,
        {"source": "http"},
    )
    running = Running(cfg)
    port = urlsplit(running.daemon.ingest_url).port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def push(start: int, stop: int) -> None:
        conn.request("POST", "/ingest/ev", body=rows(start, stop))
        response = conn.getresponse()
        assert response.status == 202, response.read()
        response.read()

    def total(ch: EmbeddedClickHouse) -> int:
        return held(ch, shard_database)[0]

    try:
        push(0, 3000)
        wait_for(lambda: running.daemon.totals.rows_inserted == 3000)
        before = [total(ch) for ch in shard_endpoints]
        proxy.set("reset")  # shard 2 goes down (every request reset)
        for start in range(3000, 9000, 1000):
            push(start, start + 1000)
        # The others take their rows while shard 2 is down.
        wait_for(lambda: total(a) > before[0] and total(b) > before[1])
        wait_for(lambda: running.daemon.dispatcher.shard_backlog()[:2] == [0, 0])
        assert total(c) == before[2]
        backlog = running.daemon.dispatcher.shard_backlog()[2]
        assert backlog > 0
        wait_for(  # once an attempt into shard 2 failed
            lambda: any(
                "shard 2" in p.reason and "held back" in p.reason
                for p in running.daemon.health().problems
            )
        )
        running.daemon._publish_shards()  # as a scrape would
        metrics = samples(running)
        assert metrics[("chworkers_shard_backlog_batches", (("shard", "2"),))] == backlog
        assert metrics[("chworkers_shard_errors_total", (("shard", "2"),))] > 0
        assert f"shard backlog 0/0/{backlog}" in running.daemon._status()
        proxy.set("pass")  # back: its parts go, each once
        wait_for(lambda: running.daemon.totals.rows_inserted == 9000)
        assert running.stop() == 0
    finally:
        conn.close()
        proxy.close()
    counts = [held(ch, shard_database) for ch in shard_endpoints]
    assert sum(n for n, _ in counts) == 9000
    assert all(n == distinct for n, distinct in counts)
    assert misplaced(shard_endpoints, shard_database) == [0, 0, 0]


@pytest.mark.timeout(240)
def test_batches_wait_whole_until_a_shard_can_say_the_columns(
    tmp_path: Path, shard_endpoints: tuple[EmbeddedClickHouse, ...], shard_database: str
) -> None:
    for ch in shard_endpoints:  # the tables exist; every shard is unreachable at start
        client = make_client(ch, database=shard_database)
        client.command("CREATE TABLE ev (id UInt64, user String) ENGINE = MergeTree ORDER BY id")
        client.close()
    proxies = [FaultProxy((ch.host, ch.port)) for ch in shard_endpoints]
    for proxy in proxies:
        proxy.set("reset")
    cfg = shard_config(
        tmp_path / "state", [[p.url] for p in proxies], shard_database, {"source": "http"}
    )
    del cfg["pipelines"][0]["create"]
    try:
        running = Running(cfg)
        port = urlsplit(running.daemon.ingest_url).port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/ingest/ev", body=rows(0, 2000))
        response = conn.getresponse()
        assert response.status == 202, response.read()  # spooled whole, answered at once
        conn.close()
        assert running.daemon.splitter is not None
        wait_for(
            lambda: any(
                "waiting to be split by shard" in p.reason for p in running.daemon.health().problems
            )
        )
        assert running.daemon.splitter.waiting() == 1
        for proxy in proxies[1:]:  # shard 0 stays down: the others can say the columns
            proxy.set("pass")
        running.daemon.request_reload()  # SIGHUP: try again now, not after the backoff
        wait_for(lambda: running.daemon.splitter.waiting() == 0)  # split by shard
        wait_for(lambda: running.daemon.dispatcher.shard_backlog()[1:] == [0, 0])
        assert all(held(ch, shard_database)[0] > 0 for ch in shard_endpoints[1:])
        assert running.daemon.dispatcher.shard_backlog()[0] == 1
        proxies[0].set("pass")
        running.daemon.request_reload()
        wait_for(lambda: running.daemon.totals.rows_inserted == 2000)
        assert running.stop() == 0
    finally:
        for proxy in proxies:
            proxy.close()
    assert sum(held(ch, shard_database)[0] for ch in shard_endpoints) == 2000
    assert misplaced(shard_endpoints, shard_database) == [0, 0, 0]


@pytest.mark.timeout(240)
def test_random_batches_go_whole_and_unreadable_keys_to_the_dead_letters(
    tmp_path: Path, shard_endpoints: tuple[EmbeddedClickHouse, ...], shard_database: str
) -> None:
    cfg = shard_config(
        tmp_path / "state",
        [[ch.url] for ch in shard_endpoints],
        shard_database,
        {"source": "http", "table": "ev", "sharding_key": "id", "max_rows": 100},
    )
    cfg["pipelines"].append(
        {
            "name": "r",
            "source": "http",
            "table": "rnd",
            "create": "id UInt64",
            "engine": "MergeTree ORDER BY id",
            "sharding_key": "random",
            "max_rows": 100,
            "max_delay": "100ms",
        }
    )
    running = Running(cfg)
    port = urlsplit(running.daemon.ingest_url).port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def push(table: str, body: bytes) -> None:
        conn.request("POST", f"/ingest/{table}", body=body)
        response = conn.getresponse()
        assert response.status == 202, response.read()
        response.read()

    try:
        for start in range(0, 1000, 100):  # ten batches of 100, each whole to one shard
            push("rnd", b"".join(b'{"id": %d}\n' % i for i in range(start, start + 100)))
        bad = b'{"id": "seven", "user": "a"}\n{"id": -1, "user": "b"}\n'
        push("ev", rows(0, 300) + bad)
        wait_for(lambda: running.daemon.totals.rows_inserted == 1300)
        assert running.stop() == 0
    finally:
        conn.close()
    per_shard = []
    for ch in shard_endpoints:
        client = make_client(ch, database=shard_database)
        counts = client.query("SELECT count(), uniqExact(id) FROM rnd").result_rows[0]
        assert counts[0] == counts[1] and counts[0] % 100 == 0, counts  # whole batches
        per_shard.append(counts[0])
        client.close()
    assert sum(per_shard) == 1000
    letters = [
        json.loads(line)
        for path in (tmp_path / "state" / "dead-letter" / "ev").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert sorted(letter["record"] for letter in letters) == sorted(
        line.decode() for line in bad.splitlines()
    )
    assert {letter["reason"] for letter in letters} == {"sharding_key"}
    messages = " ".join(letter["error"]["message"] for letter in letters)
    assert "field id = 'seven' is not an integer" in messages
    assert "negative in an unsigned column" in messages
