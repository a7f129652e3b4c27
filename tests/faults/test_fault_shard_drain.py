"""A finite run into a sharded cluster ends only once every batch is split and in.

Found by benchmarks/bench_shards_daemon.py: `chworkers run` on a finite source (a file,
the generator) stopped as soon as its dispatcher was idle, while whole batches still
waited to be split by shard (their table's columns not read yet: here, no shard answers
for the first seconds); it exited 0 with nothing inserted and the batches left in the
spool. The drain now waits for the split, as it waits for tables not created yet.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from chclients import make_client
from daemonthread import Running
from faultproxy import FaultProxy

from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(180)
def test_a_finite_sharded_run_waits_for_its_batches_to_be_split(
    tmp_path: Path, shard_endpoints: tuple[EmbeddedClickHouse, ...], shard_database: str
) -> None:
    for ch in shard_endpoints:
        client = make_client(ch, database=shard_database)
        client.command("CREATE TABLE ev (id UInt64, user String) ENGINE = MergeTree ORDER BY id")
        client.close()
    proxies = [FaultProxy((ch.host, ch.port)) for ch in shard_endpoints]
    for proxy in proxies:
        proxy.set("reset")  # no shard answers at first: the columns cannot be read
    source = tmp_path / "in.json"
    source.write_text("".join(json.dumps({"id": i, "user": f"u{i}"}) + "\n" for i in range(3000)))
    back = threading.Timer(3.0, lambda: [p.set("pass") for p in proxies])
    back.start()
    try:
        running = Running(
            {
                "state_dir": str(tmp_path / "state"),
                "clickhouse": {
                    "shards": [[p.url] for p in proxies],
                    "database": shard_database,
                    "pool": {"retry": {"deadline": 1}},
                },
                "supervisor": {"workers": 2},
                "metrics": {"port": None},
                "spool": {"fsync": False, "retry_backoff_max": 0.5},
                "pipelines": [
                    {
                        "name": "p",
                        "source": "file",
                        "paths": [str(source)],
                        "table": "ev",
                        "sharding_key": "sipHash64(user)",
                    }
                ],
            }
        )
        running.thread.join(120)  # the run ends by itself once the file is in
        assert running.stop() == 0
    finally:
        back.cancel()
        for proxy in proxies:
            proxy.close()
    assert running.daemon.totals.rows_inserted == 3000
    assert running.daemon.spool.stats()["batches"] == 0
    held = []
    for ch in shard_endpoints:
        client = make_client(ch, database=shard_database)
        held.append(int(client.command("SELECT count() FROM ev")))
        client.close()
    assert sum(held) == 3000 and all(held)
