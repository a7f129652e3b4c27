"""A ``sharding_key`` with no sharded cluster is said, at start and by ``chworkers check``.

A pipeline with ``sharding_key`` while ``[clickhouse]`` has one ``url`` and no ``shards``
was accepted silently: every row goes to that one ClickHouse and the key is ignored, so a
forgotten ``shards`` (the cluster the key was written for) went unnoticed.
"""

from __future__ import annotations

import socket
from pathlib import Path

from clirun import run_chworkers, run_until_signalled

from chworkers.daemon import config


def _conf(tmp_path: Path, port: int, key: str) -> str:
    return f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
url = "http://127.0.0.1:{port}/default"
[[pipelines]]
name = "keyed"
source = "http"
table = "ev"
{key}
[[pipelines]]
name = "plain"
source = "http"
table = "ev2"
"""


def _closed_port() -> int:
    with socket.socket() as closed:  # a ClickHouse that is not there: the check is quick
        closed.bind(("127.0.0.1", 0))
        port: int = closed.getsockname()[1]
        return port


def test_check_warns_of_a_sharding_key_without_shards(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(_conf(tmp_path, _closed_port(), 'sharding_key = "sipHash64(user)"'))
    result = run_chworkers("check", "-c", str(conf), timeout=120)
    warned = [line for line in result.stdout.splitlines() if "WARNING" in line]
    assert len(warned) == 1, result.stdout
    assert "pipeline 'keyed' has sharding_key = 'sipHash64(user)'" in warned[0]
    assert "the key is ignored" in warned[0]


def test_check_is_quiet_without_a_sharding_key(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(_conf(tmp_path, _closed_port(), ""))
    result = run_chworkers("check", "-c", str(conf), timeout=120)
    assert "sharding_key" not in result.stdout, result.stdout


def test_the_daemon_warns_at_start(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    text = _conf(tmp_path, _closed_port(), 'sharding_key = "user"')
    conf.write_text(
        text.replace("[clickhouse]", "[http]\nport = 0\n[metrics]\nport = 0\n[clickhouse]")
    )
    spool = tmp_path / "state" / "spool"  # made after the warning: it was said by then
    result, _ = run_until_signalled("run", "-c", str(conf), ready=lambda _: spool.exists())
    warned = [line for line in result.stderr.splitlines() if "the key is ignored" in line]
    assert len(warned) == 1, result.stderr[-3000:]
    assert "pipeline 'keyed' has sharding_key = 'user'" in warned[0]


def test_the_warning_names_only_keyed_pipelines(tmp_path: Path) -> None:
    import tomllib

    data = tomllib.loads(_conf(tmp_path, 1, ""))
    assert config.ignored_sharding_keys(config.load(data=data, env={})) == []
