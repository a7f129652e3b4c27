"""Replicas written as docs/sharding.md writes them in the environment: without a scheme.

`CHWORKERS_CLICKHOUSE_SHARDS=a1:8123,a2:8123;b1:8123` (and `shards = [["a1:8123"], ...]`)
passed the cluster's own validation, but the connection options every shard shares were
built from the first replica as a URL, so `chworkers run` exited 3 and `chworkers check`
died after its first line with "'a1:8123' is not a URL like http://...".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from chworkers.daemon import config
from chworkers.embedded import EmbeddedClickHouse

PIPELINE = """
[[pipelines]]
name = "events"
table = "events"
sharding_key = "user_id"
create = "user_id UInt64"
"""


def test_replicas_without_a_scheme_load_and_connect_as_http(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'[clickhouse]\ndatabase = "{database}"\n' + PIPELINE)
    env = {"CHWORKERS_CLICKHOUSE_SHARDS": "a1:8123,a2:8123;b1:9000"}
    ch = config.load(conf, env=env).settings.clickhouse
    assert ch.shards == (("a1:8123", "a2:8123"), ("b1:9000",))
    options = ch.connection()
    assert not options.secure and options.database == database
    assert [(h.host, h.port) for h in ch.cluster().shards[1].replicas] == [("b1", 9000)]

    bare = endpoint.url.split("://", 1)[1]  # 127.0.0.1:PORT
    result = subprocess.run(
        [sys.executable, "-m", "chworkers", "check", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CHWORKERS_CLICKHOUSE_SHARDS": bare},
    )
    assert f"shard 0 replica {bare}: answers (version" in result.stdout, result
    assert "events missing (`run` creates it)" in result.stdout
    assert result.returncode == 0, result
