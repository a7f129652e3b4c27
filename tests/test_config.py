from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from chworkers.daemon import config
from chworkers.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chworkers.toml"
    path.write_text(text)
    return path


def test_file_env_and_secret_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2\n")
    path = write(
        tmp_path,
        """
        state_dir = "/var/lib/x"
        [clickhouse]
        url = "http://h1:8123,h2:8123/db"
        password_file = "pw"
        [clickhouse.pool]
        max_connections = 4
        [clickhouse.pool.retry]
        max_attempts = 7
        initial_backoff = "50ms"
        [spool]
        max_bytes = "2GiB"
        [[pipelines]]
        name = "events"
        source = "http"
        table = "events"
        """,
    )
    cfg = config.load(path, env={"CHWORKERS_SUPERVISOR_WORKERS": "6"})
    s = cfg.settings
    assert s.clickhouse.pool.max_connections == 4
    assert s.clickhouse.pool.retry.max_attempts == 7
    assert s.clickhouse.pool.retry.initial_backoff == pytest.approx(0.05)
    assert s.spool.max_bytes == 2 * 1024**3
    assert s.supervisor.workers == 6
    conn = s.clickhouse.connection()
    assert conn.password == "hunter2" and conn.database == "db" and len(conn.hosts) == 2
    assert cfg.state_dir == Path("/var/lib/x")
    assert [p.name for p in cfg.pipelines] == ["events"]


def test_state_dir_defaults_to_systemd_state_directory() -> None:
    assert config.load(data={}, env={}).state_dir == Path("chworkers-state")
    cfg = config.load(data={}, env={"STATE_DIRECTORY": "/var/lib/chworkers"})
    assert cfg.state_dir == Path("/var/lib/chworkers")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[clickhouse.pool]\nmax_connections = 0\n", "clickhouse.pool.max_connections = 0"),
        ("[spool]\npolicy = 'drop'\n", "'drop_oldest'"),
        ("[spol]\n", "did you mean 'spool'"),
        ("[clickhouse.pool.retry]\ndeadline = 'soon'\n", "clickhouse.pool.retry.deadline"),
        ("this is not toml", "not valid TOML"),
        ("[[pipelines]]\nname = 'a'\ntable = 't'\nsource = 'file'\n", "needs paths"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        config.load(path, env={})
    assert str(path) in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load("/nonexistent/chworkers.toml", env={})


def test_defaults_file_loads_back_to_the_defaults() -> None:
    text = config.defaults_toml()
    assert "# env: CHWORKERS_CLICKHOUSE_POOL_MAX_CONNECTIONS" in text
    loaded = config.load(data=tomllib.loads(text), env={})
    assert loaded.settings == config.load(data={}, env={}).settings


def test_docs_reference_is_generated_from_the_declarations() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == config.reference_markdown(), (
        "docs/configuration.md is stale: run `chworkers config --reference > docs/configuration.md`"
    )
