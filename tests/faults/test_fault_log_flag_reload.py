"""``--log-level`` lost to the file on SIGHUP when the two happened to agree.

The daemon guessed whether the flag had set the level by comparing the root logger's
level with the file's: with ``--log-level INFO`` and ``level = "INFO"`` in the file, a
SIGHUP after the file said ``DEBUG`` turned DEBUG on, although the command line said
INFO. The command line's settings now ride along in the configuration (``overrides``)
and win on every reload, as they do at start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonthread import Running, push_config
from tomlfile import to_toml
from waiting import wait_for

from chworkers.daemon import config
from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(180)


def text(tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, level: str) -> str:
    url = f"{endpoint.url}/{database}"
    data = push_config(tmp_path / "state", url, log={"level": level}, pipeline={"name": "push"})
    return to_toml(data)


@pytest.fixture
def root_level() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)  # what the command line configured
    yield root
    root.setLevel(before)


def test_a_log_level_flag_wins_over_the_file_on_sighup(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, root_level: logging.Logger
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(text(tmp_path, endpoint, database, "INFO"))
    cfg = config.load(conf, env={}, overrides={"log.level": "INFO"})
    running = Running(cfg)
    try:
        conf.write_text(text(tmp_path, endpoint, database, "DEBUG"))
        running.daemon.request_reload()
        wait_for(lambda: running.daemon.config is not cfg, 60, what="the reload")
        assert root_level.level == logging.INFO
        assert running.daemon.config.settings.log.level == "INFO"
        assert running.daemon.config.overrides == {"log.level": "INFO"}
    finally:
        running.stop()


def test_without_the_flag_sighup_applies_the_files_level(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, root_level: logging.Logger
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(text(tmp_path, endpoint, database, "INFO"))
    cfg = config.load(conf, env={})
    running = Running(cfg)
    try:
        conf.write_text(text(tmp_path, endpoint, database, "WARNING"))
        running.daemon.request_reload()
        wait_for(lambda: running.daemon.config is not cfg, 60, what="the reload")
        assert root_level.level == logging.WARNING
    finally:
        running.stop()
