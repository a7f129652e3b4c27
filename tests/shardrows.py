"""Three embedded endpoints as the shards of a broker pipeline's cluster (tests of
docs/sharding.md with source = "redis" / "nats"): the daemon's configuration, the
broker's entries, and what each shard holds, checked by ClickHouse's own evaluation of
the sharding key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brokerfeeds import bodies
from chclients import make_client
from natsserver import NatsServer
from redisserver import RedisServer

from chworkers.embedded import EmbeddedClickHouse

WEIGHTS = [1, 2, 1]
KEY = "sipHash64(s)"


def cluster_config(
    state: Path, shards: list[list[str]], database: str, pipeline: dict[str, Any]
) -> dict[str, Any]:
    """A daemon's configuration for a cluster of ``shards`` weighted by :data:`WEIGHTS`
    (quick to give up on a shard that is down), with one pipeline ``p`` into table
    ``ev`` whose other keys are ``pipeline``'s."""
    return {
        "state_dir": str(state),
        "clickhouse": {
            "shards": shards,
            "shard_weights": WEIGHTS,
            "database": database,
            "pool": {
                "max_connections": 2,
                "host_cooldown": 0.2,
                "retry": {"initial_backoff": 0.05, "max_backoff": 0.2, "deadline": 2},
            },
        },
        "supervisor": {"workers": 3},
        "metrics": {"port": 0},
        "spool": {"fsync": False, "retry_backoff_max": 0.5},
        "http": {"port": 0},
        "pipelines": [{"name": "p", "table": "ev", **pipeline}],
    }


def sharded_config(
    state: Path, shards: list[str], database: str, broker: str, options: dict[str, Any]
) -> dict[str, Any]:
    return cluster_config(
        state,
        [[url] for url in shards],
        database,
        {
            "source": broker,
            "create": "n UInt64, s String",
            "engine": "MergeTree ORDER BY n",
            "max_rows": 1000,
            "max_delay": 0.1,
            "sharding_key": KEY,
            broker: options,
        },
    )


class Broker:
    """The test's broker, whichever it is: entries in, and whether all are acknowledged."""

    def __init__(self, kind: str, server: RedisServer | NatsServer) -> None:
        self.kind, self.server = kind, server
        if isinstance(server, NatsServer):
            server.make_stream()

    def options(self) -> dict[str, Any]:
        if self.kind == "redis":
            return {
                "url": self.server.url,
                "stream": "ev",
                "claim_idle": 2.0,
                "claim_interval": 0.2,
            }
        return {"url": self.server.url, "stream": "ev", "ack_wait": 2.0}

    def add(self, start: int, stop: int) -> None:
        records = bodies(start, stop, 20)
        if isinstance(self.server, RedisServer):
            self.server.add_entries(records)
        else:
            self.server.publish(records)

    def settled(self) -> bool:
        return self.server.settled()

    def unacknowledged(self) -> int:
        """Entries delivered and not acknowledged."""
        if isinstance(self.server, RedisServer):
            return self.server.pending()
        return self.server.consumer_state()[1]


def held(shards: tuple[EmbeddedClickHouse, ...], index: int, database: str) -> tuple[int, int, int]:
    """Shard ``index``'s rows, distinct n, and rows a Distributed table would NOT have
    sent it (ClickHouse evaluating the key)."""
    start = sum(WEIGHTS[:index])
    client = make_client(shards[index], database=database)
    try:
        if not int(client.command("EXISTS TABLE ev")):
            return 0, 0, 0
        return client.query(  # type: ignore[no-any-return]
            f"SELECT count(), uniqExact(n), countIf({KEY} % {sum(WEIGHTS)} NOT BETWEEN "
            f"{start} AND {start + WEIGHTS[index] - 1}) FROM ev"
        ).result_rows[0]
    finally:
        client.close()


def each_row_once(
    shards: tuple[EmbeddedClickHouse, ...], database: str, total: int, *, on_its_shard: bool = True
) -> list[tuple[int, int, int]]:
    """What each shard holds (:func:`held`), checked: ``total`` rows in all, none twice
    on a shard, and (``on_its_shard``) each on the shard its key picks."""
    counts = [held(shards, i, database) for i in range(len(shards))]
    assert sum(n for n, _, _ in counts) == total, counts
    assert all(n == distinct for n, distinct, _ in counts), counts  # no duplicates
    if on_its_shard:
        assert [wrong for _, _, wrong in counts] == [0] * len(shards), counts
    return counts
