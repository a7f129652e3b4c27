"""The daemon's commands as a user runs them: run --demo, check, config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chworkers.embedded import EmbeddedClickHouse


def chworkers(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chworkers", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(240)
def test_run_demo_ingests_reports_and_appends(tmp_path: Path) -> None:
    state = str(tmp_path / "demo")
    first = chworkers("run", "--demo", "--rows", "20000", "--state-dir", state)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    assert "demo_events now holds 20,000 rows" in out
    assert "purchase" in out and "avg(value)" in out
    assert "metrics were served at http://127.0.0.1:" in out
    assert "inserted 20,000 rows in" in out
    assert "spool: 0 batches left" in out
    again = chworkers("run", "--demo", "--rows", "5000", "--state-dir", state)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "demo_events now holds 25,000 rows" in again.stdout


def test_run_without_config_says_what_to_do() -> None:
    result = chworkers("run")
    assert result.returncode == 1
    assert "give a config file (-c FILE) or try --demo" in result.stderr


def test_bad_config_exits_3_naming_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("[spool]\npolicy = 'sometimes'\n")
    for command in ("run", "check"):
        result = chworkers(command, "-c", str(conf))
        assert result.returncode == 3
        assert "spool.policy = 'sometimes' is invalid" in result.stderr
        assert "Traceback" not in result.stderr


def test_config_defaults_and_reference() -> None:
    defaults = chworkers("config", "--defaults")
    assert defaults.returncode == 0
    assert "[clickhouse.pool.retry]" in defaults.stdout
    assert "# env: CHWORKERS_SPOOL_MAX_BYTES" in defaults.stdout
    reference = chworkers("config", "--reference")
    committed = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert reference.stdout == committed


def test_config_shows_effective_settings_without_secrets(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        '[clickhouse]\nurl = "http://h:8123/db"\npassword = "hunter2"\n[http]\ntoken = "t0k"\n'
    )
    result = chworkers("config", "-c", str(conf))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["settings"]["clickhouse"]["password"] == "***"
    assert shown["settings"]["http"]["token"] == "***"
    assert "hunter2" not in result.stdout and "t0k" not in result.stdout


def test_check_reaches_clickhouse_and_reports_tables(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"""
[clickhouse]
url = "{endpoint.url}/{database}"
[[pipelines]]
name = "declared"
table = "created_on_run"
create = "n UInt64"
[[pipelines]]
name = "missing"
table = "nowhere"
"""
    )
    result = chworkers("check", "-c", str(conf))
    assert "configuration is valid (2 pipelines)" in result.stdout
    assert "answers (version" in result.stdout
    assert "created_on_run missing; `run` creates it" in result.stdout
    assert "nowhere MISSING" in result.stdout
    assert result.returncode == 1
