"""A pipeline's `create` that ClickHouse refuses is named as such, by `check` and `run`.

`chworkers check` said "table t missing; `run` creates it" (exit 0) for a `create` with a
typo in a type (`name Strin`), and `run` then warned "ClickHouse is not reachable yet ...
tables t are created once it is" while ClickHouse answered every attempt with
UNKNOWN_TYPE: the operator was sent looking for an outage that was not there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from daemonthread import Running, daemon_config

from chworkers.cli.main import main
from chworkers.daemon import config
from chworkers.embedded import EmbeddedClickHouse

CONF = """
[clickhouse]
url = "{url}"
[[pipelines]]
name = "p"
source = "http"
table = "ev"
create = "{create}"
engine = "{engine}"
"""


@pytest.mark.parametrize(
    ("create", "engine", "said"),
    [
        ("n UInt64, s Strin", "MergeTree ORDER BY n", "UNKNOWN_TYPE (50): Unknown data type"),
        ("n UInt64", "MergeTree ORDER BY (n", "SYNTAX_ERROR (62): Syntax error"),
    ],
)
def test_check_says_clickhouse_refuses_the_create(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    capsys: pytest.CaptureFixture[str],
    create: str,
    engine: str,
    said: str,
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONF.format(url=f"{endpoint.url}/{database}", create=create, engine=engine))
    assert main(["check", "-c", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"pipeline p: table ev MISSING, and ClickHouse refuses its `create`: {said}" in out


def test_check_accepts_a_create_clickhouse_takes(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "c.toml"
    create = "n UInt64, s String DEFAULT 'it''s \\\\\\\\ fine' CODEC(ZSTD)"  # quotes, a backslash
    path.write_text(
        CONF.format(url=f"{endpoint.url}/{database}", create=create, engine="MergeTree ORDER BY n")
    )
    assert main(["check", "-c", str(path)]) == 0, capsys.readouterr().out
    assert "pipeline p: table ev missing; `run` creates it" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_run_says_clickhouse_refuses_the_create_not_that_it_is_unreachable(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chworkers")
    data = daemon_config(tmp_path / "state", f"{endpoint.url}/{database}", {"source": "http"})
    data["clickhouse"]["startup_wait"] = 3.0
    data["pipelines"][0]["create"] = "n UInt64, s Strin"
    running = Running(config.load(data=data, env={}))
    try:
        assert running.daemon.tables.refused().keys() == {"ev"}
    finally:
        running.stop()
    refused = [r for r in caplog.records if "ClickHouse refuses to create table ev" in r.message]
    assert refused and refused[0].levelno == logging.ERROR, caplog.text
    assert "UNKNOWN_TYPE" in refused[0].message
    assert "not reachable" not in caplog.text
