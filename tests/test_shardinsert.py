"""``Supervisor.insert(..., sharding_key=...)`` over three embedded endpoints as three
shards: every shard holds exactly the rows ClickHouse's own evaluation of the key puts
there, nothing twice, each shard confirms its part alone, and a shard that is down fails
only its part (a :class:`ShardInsertError` that names it) until the batch is sent again."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from chclients import make_client
from faultproxy import FaultProxy

from chworkers import EmbeddedClickHouse, ShardedFuture, ShardInsertError, Supervisor
from chworkers.errors import BatchError, ConfigError

pytestmark = pytest.mark.timeout(180)

WEIGHTS = [1, 2, 1]
COLUMNS = "user_id String, n UInt64, v Int32"
TABLE = (
    f"CREATE TABLE events ({COLUMNS}) ENGINE = MergeTree ORDER BY n "
    "SETTINGS non_replicated_deduplication_window = 1000"
)


def _rows(count: int, seed: int = 14) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    names = ["", "ünï", "bob", *(f"user-{i}" for i in range(50))]
    return [
        {"user_id": rng.choice(names), "n": i, "v": rng.randint(-(2**31), 2**31 - 1)}
        for i in range(count)
    ]


@pytest.fixture
def shards(
    shard_endpoints: tuple[EmbeddedClickHouse, ...], shard_database: str
) -> Iterator[list[Any]]:
    """A client of each shard's database, with the ``events`` table created."""
    clients = [make_client(ch, database=shard_database) for ch in shard_endpoints]
    for client in clients:
        client.command(TABLE)
    yield clients
    for client in clients:
        client.close()


def _supervisor(urls: list[str], database: str, **kw: Any) -> Supervisor:
    kw.setdefault("retry", {"max_attempts": 2, "initial_backoff": 0.01})
    return Supervisor(
        f"{urls[0]}/{database}",
        shards={"shards": [[u] for u in urls], "weights": WEIGHTS},
        workers=2,
        start_method="fork",
        **kw,
    )


def _check_placement(shards: list[Any], key: str, total: int) -> None:
    """Each shard holds only rows whose key ClickHouse puts in one of its slots; the
    total is exact, and no row is there twice."""
    slots = [i for i, w in enumerate(WEIGHTS) for _ in range(w)]
    counted = 0
    for index, client in enumerate(shards):
        mine = [s for s, shard in enumerate(slots) if shard == index]
        count, misplaced, distinct = client.query(
            f"SELECT count(), countIf(toUInt64({key}) % {len(slots)} NOT IN {tuple([*mine, -1])}), "
            "uniqExact(n) FROM events"
        ).result_rows[0]
        assert misplaced == 0, f"shard {index}: {misplaced} rows belong elsewhere"
        assert count == distinct, f"shard {index}: duplicates"
        assert count > 0, f"shard {index} got nothing: the test could not tell"
        counted += count
    assert counted == total


def test_rows_land_where_clickhouse_routes_them(
    shard_endpoints: tuple[EmbeddedClickHouse, ...], shard_database: str, shards: list[Any]
) -> None:
    rows = _rows(3000)
    with _supervisor([ch.url for ch in shard_endpoints], shard_database) as sup:
        future = sup.insert("events", rows, sharding_key="sipHash64(user_id)")
        assert isinstance(future, ShardedFuture)
        assert future.result(60) == 3000
        assert set(future.parts) == {0, 1, 2}
        assert sum(f.result() for f in future.parts.values()) == 3000
        # The same batch again (its token derives from its content): nothing twice.
        assert sup.insert("events", rows, sharding_key="sipHash64(user_id)").result(60) == 3000
    _check_placement(shards, "sipHash64(user_id)", 3000)


@pytest.mark.parametrize("form", ["columns", "pandas", "arrow", "tuples"])
def test_every_batch_form_splits_the_same(
    shard_endpoints: tuple[EmbeddedClickHouse, ...],
    shard_database: str,
    shards: list[Any],
    form: str,
) -> None:
    rows = _rows(400, seed=3)
    names = ["user_id", "n", "v"]
    data: Any
    if form == "columns":
        data = {name: [r[name] for r in rows] for name in names}
    elif form == "pandas":
        data = pd.DataFrame(rows).astype({"n": "uint64", "v": "int32"})
    elif form == "arrow":
        data = pa.Table.from_pylist(rows)
    else:
        data = [tuple(r[n] for n in names) for r in rows]
    key = "sipHash64(v, user_id)"
    with _supervisor([ch.url for ch in shard_endpoints], shard_database) as sup:
        column_names = names if form == "tuples" else None
        assert sup.insert("events", data, column_names, sharding_key=key).result(60) == 400
    _check_placement(shards, key, 400)


def test_a_shard_down_fails_only_its_part_until_sent_again(
    shard_endpoints: tuple[EmbeddedClickHouse, ...], shard_database: str, shards: list[Any]
) -> None:
    proxy = FaultProxy((shard_endpoints[1].host, shard_endpoints[1].port))
    try:
        urls = [shard_endpoints[0].url, proxy.url, shard_endpoints[2].url]
        rows = _rows(1200, seed=7)
        with _supervisor(urls, shard_database) as sup:
            warm = [{**r, "n": r["n"] + 10**6} for r in rows[:10]]  # the schema is known now
            assert sup.insert("events", warm, sharding_key="n").result(60) == 10
            proxy.set("reset")  # every request to shard 1 is reset, as by a server gone
            future = sup.insert("events", rows, sharding_key="n", deduplication_token="batch-1")
            with pytest.raises(ShardInsertError) as info:
                future.result(90)
            error = info.value
            assert error.failed == [1]
            assert "shard 1 failed (shards 0, 2 confirmed" in str(error)
            assert error.written == future.parts[0].result() + future.parts[2].result()
            assert error.__cause__ is not None
            proxy.set("pass")
            again = sup.insert("events", rows, sharding_key="n", deduplication_token="batch-1")
            assert again.result(60) == 1200
    finally:
        proxy.close()
    counts = [c.query("SELECT count() FROM events").result_rows[0][0] for c in shards]
    assert sum(counts) == 1210  # every row exactly once
    _check_placement(shards, "n", 1210)


def test_a_random_key_sends_the_whole_batch_to_one_shard_stably(
    shard_endpoints: tuple[EmbeddedClickHouse, ...], shard_database: str, shards: list[Any]
) -> None:
    rows = _rows(50)
    with _supervisor([ch.url for ch in shard_endpoints], shard_database) as sup:
        first = sup.insert("events", rows, sharding_key="rand()", deduplication_token="r1")
        assert first.result(60) == 50
        again = sup.insert("events", rows, sharding_key="rand()", deduplication_token="r1")
        assert again.result(60) == 50
        assert list(first.parts) == list(again.parts)  # the same shard for the same token
    counts = [c.query("SELECT count() FROM events").result_rows[0][0] for c in shards]
    assert sorted(counts) == [0, 0, 50]


def test_what_a_sharded_insert_refuses(
    shard_endpoints: tuple[EmbeddedClickHouse, ...],
    shard_database: str,
    shards: list[Any],
    endpoint: EmbeddedClickHouse,
) -> None:
    with _supervisor([ch.url for ch in shard_endpoints], shard_database) as sup:
        with pytest.raises(ConfigError, match="give shard or sharding_key, not both"):
            sup.insert("events", [], sharding_key="n", shard=0)
        with pytest.raises(ConfigError, match="function murmurHash3_64 is not supported"):
            sup.insert("events", [{"n": 1}], sharding_key="murmurHash3_64(n)")
        with pytest.raises(BatchError, match="the batch has no column 'user_id'"):
            sup.insert("events", [{"n": 1, "v": 2}], sharding_key="sipHash64(user_id)")
        with pytest.raises(BatchError, match="row 1: sharding key field 'n' = -1 is out of range"):
            sup.insert("events", [{"n": 1}, {"n": -1}], sharding_key="n")
        with pytest.raises(ConfigError, match="could not be looked up on any shard"):
            sup.insert("missing", [{"n": 1}], sharding_key="n")
        assert sup.insert("events", [], ["n"], sharding_key="n").result(10) == 0
    with (
        Supervisor(endpoint.url, workers=1, start_method="fork") as plain,
        pytest.raises(ConfigError, match="needs a sharded cluster"),
    ):
        plain.insert("events", [{"n": 1}], sharding_key="n")


def test_a_shards_replicas_fail_over_under_the_supervisor(
    shard_endpoints: tuple[EmbeddedClickHouse, ...], shard_database: str, shards: list[Any]
) -> None:
    """Shard 1 has two replicas: a proxy that resets every request, and the endpoint
    itself (one chDB data directory cannot be two servers; the proxy stands in for the
    second). Its rows all land through the replica that answers."""
    proxy = FaultProxy((shard_endpoints[1].host, shard_endpoints[1].port))
    proxy.set("reset")
    try:
        replicas = [
            [shard_endpoints[0].url],
            [proxy.url, shard_endpoints[1].url],
            [shard_endpoints[2].url],
        ]
        rows = _rows(600, seed=5)
        with Supervisor(
            f"{shard_endpoints[0].url}/{shard_database}",
            shards={"shards": replicas, "weights": WEIGHTS},
            workers=2,
            start_method="fork",
            retry={"max_attempts": 4, "initial_backoff": 0.01},
        ) as sup:
            for i in range(0, 600, 100):
                assert (
                    sup.insert(
                        "events", rows[i : i + 100], sharding_key="xxHash64(user_id, n)"
                    ).result(60)
                    == 100
                )
        assert proxy.counts["reset"] >= 1  # the broken replica was tried, and failed over
    finally:
        proxy.close()
    _check_placement(shards, "xxHash64(user_id, n)", 600)
