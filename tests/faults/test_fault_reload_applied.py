"""After SIGHUP the daemon's settings are what it runs with, not what it refused.

A reload applies only the supervisor's settings, the connection budget, the retry policy
and the log level; the other changes wait for a restart (and SIGHUP says so). The daemon
kept the new file's values all the same in ``Daemon.config.settings``, so what it
reported (and what later reads of its settings, such as the graceful timeout, used) was
a configuration it was not running.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from daemonthread import Running, push_config
from tomlfile import merge, to_toml
from waiting import wait_for

from chworkers.daemon import config
from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(180)
def test_the_settings_after_sighup_are_the_ones_applied(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.toml"
    data = push_config(
        tmp_path / "state",
        f"{endpoint.url}/{database}",
        clickhouse={"pool": {"max_connections": 4}},
        supervisor={"graceful_timeout": 30},
        spool={"max_bytes": "64MiB"},
    )
    path.write_text(to_toml(data))
    caplog.set_level(logging.INFO, logger="chworkers")
    running = Running(config.load(path, env={}))
    try:
        started = running.daemon.config.settings
        changes = {
            "clickhouse": {
                "pool": {"max_connections": 6},  # applied
                "url": "http://127.0.0.1:1/x",  # waits for a restart
            },
            "supervisor": {"workers": 2, "graceful_timeout": 5},  # applied
            "spool": {"max_bytes": "32MiB"},  # waits for a restart
        }
        path.write_text(to_toml(merge(data, changes)))
        running.daemon.request_reload()
        wait_for(lambda: "SIGHUP: reloaded" in caplog.text, timeout=60, what="the reload")
        # Said old -> new, each setting it applied (it logged "(workers 2)" only).
        said = [r.getMessage() for r in caplog.records if "SIGHUP: reloaded" in r.getMessage()]
        assert said == [
            f"SIGHUP: reloaded {path}: clickhouse.pool.max_connections 4 -> 6, "
            "supervisor.workers 1 -> 2, supervisor.graceful_timeout 30 s -> 5 s"
        ]
        now = running.daemon.config.settings
        assert now.supervisor.workers == 2
        assert now.supervisor.graceful_timeout == 5
        assert now.clickhouse.pool.max_connections == 6
        # Refused until a restart: as it started.
        assert now.spool.max_bytes == started.spool.max_bytes == 64 * 1024 * 1024
        assert now.clickhouse.url == started.clickhouse.url
        assert now.spool == started.spool and now.metrics == started.metrics
    finally:
        running.stop()
