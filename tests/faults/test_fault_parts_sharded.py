"""Regression test: a sharded daemon reads its tables' parts on every shard.

The parts check went through ``Supervisor.submit``, which a sharded pool refuses (it
needs a shard): the check failed every time, at debug level, and a sharded daemon slowed
down only once ClickHouse refused inserts. It now asks every shard, the most crowded
shard counting.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chclients import make_client
from daemonthread import Running
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(120)
def test_parts_are_read_on_every_shard(
    tmp_path: Path, shard_endpoints: tuple[EmbeddedClickHouse, ...], shard_database: str
) -> None:
    crowded = shard_endpoints[2]
    for index, ch in enumerate(shard_endpoints):
        client = make_client(ch, database=shard_database)
        try:
            # Shard 2 has the smallest parts_to_delay_insert: its 3 parts are 0.6 of it.
            delay = 5 if index == 2 else 1000
            client.command(
                "CREATE TABLE ev (id UInt64, user String) ENGINE = MergeTree ORDER BY id "
                f"SETTINGS parts_to_delay_insert = {delay}, parts_to_throw_insert = 1000"
            )
            if ch is crowded:
                client.command("SYSTEM STOP MERGES ev")
                for i in range(3):
                    client.command(f"INSERT INTO ev VALUES ({i}, 'u')")
        finally:
            client.close()
    cfg = {
        "state_dir": str(tmp_path / "state"),
        "clickhouse": {
            "shards": [[ch.url] for ch in shard_endpoints],
            "database": shard_database,
            "pool": {"max_connections": 2},
        },
        "supervisor": {"workers": 2},
        "metrics": {"port": 0},
        "http": {"port": 0},
        "parts": {"check_interval": 0.2},
        "pipelines": [
            {"name": "p", "table": "ev", "source": "http", "sharding_key": "sipHash64(user)"}
        ],
    }
    running = Running(cfg)
    try:
        registry = running.daemon.metrics.registry

        def sample(name: str) -> float | None:
            return registry.get_sample_value(name, {"table": "ev"})

        wait_for(lambda: sample("chworkers_table_active_parts") == 3, timeout=60)
        assert sample("chworkers_table_parts_to_delay_insert") == 5
        wait_for(lambda: (sample("chworkers_parts_batch_factor") or 0) > 1, timeout=30)
    finally:
        running.stop()
