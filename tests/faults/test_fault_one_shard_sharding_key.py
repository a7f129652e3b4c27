"""A ``sharding_key`` over ``shards`` with one shard is said, as over a single ``url``.

Since session 7 a pipeline's ``sharding_key`` with one ``url`` and no ``shards`` is
warned of at start and by ``chworkers check``: every row goes to that one ClickHouse and
the key is ignored. ``shards`` with a single shard is the same (every row goes to that
shard), but said nothing: a cluster's other shards left out of the list went unnoticed.
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

from clirun import run_chworkers

from chworkers.daemon import config


def _conf(tmp_path: Path, shards: str) -> str:
    return f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
shards = {shards}
[[pipelines]]
name = "keyed"
source = "http"
table = "ev"
sharding_key = "sipHash64(user)"
[[pipelines]]
name = "plain"
source = "http"
table = "ev2"
"""


def test_one_shard_with_a_sharding_key_is_warned_of() -> None:
    one = '[["http://127.0.0.1:1", "http://127.0.0.1:2"]]'
    cfg = config.load(data=tomllib.loads(_conf(Path("/tmp/x"), one)), env={})
    warnings = config.ignored_sharding_keys(cfg)
    assert len(warnings) == 1, warnings
    assert "pipeline 'keyed' has sharding_key = 'sipHash64(user)'" in warnings[0]
    assert "clickhouse.shards has one shard: the key is ignored" in warnings[0]


def test_two_shards_are_not_warned_of() -> None:
    two = '[["http://127.0.0.1:1"], ["http://127.0.0.1:2"]]'
    data = tomllib.loads(_conf(Path("/tmp/x"), two))
    data["pipelines"][1]["sharding_key"] = "random"  # two shards: every pipeline needs one
    assert config.ignored_sharding_keys(config.load(data=data, env={})) == []


def test_check_warns_of_a_sharding_key_over_one_shard(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a ClickHouse that is not there: the check is quick
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    conf = tmp_path / "c.toml"
    conf.write_text(_conf(tmp_path, f'[["http://127.0.0.1:{port}"]]'))
    result = run_chworkers("check", "-c", str(conf), timeout=120)
    warned = [line for line in result.stdout.splitlines() if "WARNING" in line]
    assert len(warned) == 1, result.stdout + result.stderr
    assert "pipeline 'keyed' has sharding_key = 'sipHash64(user)'" in warned[0]
    assert "one shard: the key is ignored" in warned[0]
