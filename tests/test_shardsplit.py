"""A batch split by shard puts each row where ClickHouse's own evaluation of the key says,
with the weights' slots a Distributed table uses; the split is the same every time."""

from __future__ import annotations

import json
import random

import pytest
from chclients import make_client

from chworkers.clickhouse.cluster import Cluster
from chworkers.clickhouse.sharding import ShardingKey, ShardRouter
from chworkers.daemon.keycolumns import Column
from chworkers.daemon.shardsplit import random_part, split_records
from chworkers.embedded import EmbeddedClickHouse

COLUMNS = [Column("id", "UInt64"), Column("user", "String"), Column("n", "Int32")]
SCHEMA = "id UInt64, user String, n Int32"
WEIGHTS = (1, 2, 1)


def records(count: int, fmt: str) -> bytes:
    rng = random.Random(7)
    lines = []
    for i in range(count):
        user = rng.choice(["", "ä", "bob", "x" * 40, f"u{rng.randrange(10_000)}"])
        n = rng.randrange(-(2**31), 2**31)
        if fmt == "JSONEachRow":
            lines.append(json.dumps({"id": i, "user": user, "n": n}))
        elif fmt == "CSVWithNames":
            lines.append(f'{n},"{user}",{i}')
        else:
            lines.append(f"{i}\t{user}\t{n}")
    header = "n,user,id\n" if fmt == "CSVWithNames" else ""
    return (header + "\n".join(lines) + "\n").encode()


def slots(weights: tuple[int, ...], shard: int) -> list[int]:
    start = sum(weights[:shard])
    return list(range(start, start + weights[shard]))


@pytest.mark.parametrize(
    ("expression", "fmt"),
    [
        ("sipHash64(user)", "JSONEachRow"),
        ("n", "TSV"),
        ("sipHash64(id, user)", "CSVWithNames"),
        ("intHash64(id)", "JSONEachRow"),
    ],
)
def test_each_shard_gets_exactly_the_rows_clickhouse_routes_to_it(
    shard_endpoints: tuple[EmbeddedClickHouse, ...],
    shard_database: str,
    expression: str,
    fmt: str,
) -> None:
    cluster = Cluster.parse([[ch.url] for ch in shard_endpoints], weights=WEIGHTS)
    key = ShardingKey.parse(expression).bind({c.name: c.type for c in COLUMNS})
    payload = records(3000, fmt)
    split = split_records(
        payload,
        format=fmt,
        token="chw-t-1",
        key=key,
        columns=COLUMNS,
        router=ShardRouter(cluster),
    )
    assert not split.rejected
    assert [p.meta["shard"] for p in split.parts] == [0, 1, 2]
    assert [p.token for p in split.parts] == [f"chw-t-1@shard{i}" for i in range(3)]
    again = split_records(
        payload, format=fmt, token="chw-t-1", key=key, columns=COLUMNS, router=ShardRouter(cluster)
    )
    assert again == split  # a split made again after a crash is the same, byte for byte
    total = sum(WEIGHTS)
    for part, ch in zip(split.parts, shard_endpoints, strict=True):
        client = make_client(ch, database=shard_database)
        try:
            client.command(f"CREATE TABLE t ({SCHEMA}) ENGINE = MergeTree ORDER BY id")
            client.raw_insert("t", insert_block=part.payload, fmt=fmt)
            # ClickHouse evaluates the key on what it stored; a plain signed key is
            # taken as its unsigned twin, as a Distributed table takes it.
            value = f"reinterpretAsUInt32({expression})" if expression == "n" else expression
            held = client.query(
                f"SELECT {value} % {total} AS slot, count() FROM t GROUP BY slot ORDER BY slot"
            ).result_rows
            assert sum(c for _, c in held) == part.rows
            assert {s for s, _ in held} <= set(slots(WEIGHTS, part.meta["shard"])), held
        finally:
            client.close()
    assert sum(p.rows for p in split.parts) == 3000


def test_records_whose_key_cannot_be_read_are_rejected_with_the_reason() -> None:
    key = ShardingKey.parse("id").bind({"id": "UInt64"})
    router = ShardRouter((1, 1))
    payload = b'{"id": 1}\n{"id": "x"}\n{"id": -3}\nnot json\n{"id": 2}\n'
    split = split_records(
        payload,
        format="JSONEachRow",
        token="t",
        key=key,
        columns=[Column("id", "UInt64")],
        router=router,
    )
    assert sum(p.rows for p in split.parts) == 2
    reasons = {record: str(error) for record, error in split.rejected}
    assert reasons.keys() == {b'{"id": "x"}\n', b'{"id": -3}\n', b"not json\n"}
    assert "is not an integer" in reasons[b'{"id": "x"}\n']
    assert "negative in an unsigned column" in reasons[b'{"id": -3}\n']


def test_a_header_without_the_key_rejects_every_record() -> None:
    key = ShardingKey.parse("id").bind({"id": "UInt64"})
    split = split_records(
        b"a,b\n1,2\n3,4\n",
        format="CSVWithNames",
        token="t",
        key=key,
        columns=[Column("id", "UInt64")],
        router=ShardRouter((1, 1)),
    )
    assert split.parts == ()
    assert [r for r, _ in split.rejected] == [b"a,b\n1,2\n", b"a,b\n3,4\n"]


def test_a_random_key_sends_the_batch_whole_to_one_shard_by_weight() -> None:
    router = ShardRouter((1, 3))
    shards = [
        random_part(b"x\n", rows=1, token=f"t{i}", router=router).meta["shard"] for i in range(400)
    ]
    assert 60 < shards.count(0) < 140  # a quarter, by weight
    part = random_part(b"a\nb\n", rows=2, token="t", router=router)
    assert part.payload == b"a\nb\n" and part.token == f"t@shard{part.meta['shard']}"
    # The same batch (its token) goes to the same shard when it is split again.
    assert {
        random_part(b"x\n", rows=1, token="t", router=router).meta["shard"] for _ in range(20)
    } == {part.meta["shard"]}
