"""``ConnectionConfig`` parsed its own values: a timeout of ``"5s"`` (as every other
duration in the config file is written) was refused, and the timeouts could only be set
inside the URL. Its fields are now declared settings: they parse like the config file's,
``[clickhouse] connect_timeout`` exists, and a bad value fails with the same message."""

from __future__ import annotations

from pathlib import Path

import pytest

from chworkers.clickhouse.dsn import ConnectionConfig
from chworkers.daemon import config
from chworkers.errors import ConfigError

DURATION = "expected a duration such as 30, 2.5, '250ms', '5s', '2m' or '1h'"


def test_connection_timeouts_take_durations() -> None:
    cfg = ConnectionConfig.from_url("http://h:8123/db?connect_timeout=5s&send_receive_timeout=2m")
    assert (cfg.connect_timeout, cfg.send_receive_timeout) == (5.0, 120.0)
    assert ConnectionConfig(connect_timeout="250ms").connect_timeout == 0.25  # type: ignore[arg-type]
    assert ConnectionConfig.coerce({"timeouts": {"connect": "1s"}}).connect_timeout == 1.0


def test_the_config_file_sets_the_timeouts_over_the_urls(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[clickhouse]\nurl = "http://h:8123/db?connect_timeout=3"\nconnect_timeout = "5s"\n'
    )
    conn = config.load(path, env={}).settings.clickhouse.connection()
    assert (conn.connect_timeout, conn.send_receive_timeout) == (5.0, 300.0)
    path.write_text('[clickhouse]\nurl = "http://h:8123/db?connect_timeout=3"\n')
    assert config.load(path, env={}).settings.clickhouse.connection().connect_timeout == 3.0
    env = {"CHWORKERS_CLICKHOUSE_SEND_RECEIVE_TIMEOUT": "90s"}
    assert config.load(path, env=env).settings.clickhouse.connection().send_receive_timeout == 90


def test_a_bad_timeout_fails_as_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[clickhouse]\nurl = "http://h:8123/db"\nconnect_timeout = "5x"\n')
    with pytest.raises(ConfigError) as from_file:
        config.load(path, env={})
    assert from_file.value.key == "clickhouse.connect_timeout"
    assert f"clickhouse.connect_timeout = '5x' is invalid: {DURATION}" in str(from_file.value)
    with pytest.raises(ConfigError) as from_url:
        ConnectionConfig.from_url("http://h:8123/db?connect_timeout=5x")
    assert from_url.value.key == "connect_timeout"
    assert f"connect_timeout = '5x' is invalid: {DURATION}" in str(from_url.value)
    path.write_text('[clickhouse]\nurl = "http://h:8123/db?connect_timeout=-1"\n')
    with pytest.raises(ConfigError, match=r"clickhouse\.url: .*connect_timeout = '-1'") as bad:
        config.load(path, env={})
    assert bad.value.key == "clickhouse.url"


def test_a_bad_password_is_not_shown() -> None:
    with pytest.raises(ConfigError) as info:
        ConnectionConfig(password=12345)  # type: ignore[arg-type]
    assert "12345" not in str(info.value) and info.value.value == "***"
    assert "s3cret" not in repr(ConnectionConfig(password="s3cret"))
