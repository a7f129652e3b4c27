"""SIGHUP changed the worker count but not the dispatcher's in-flight limit (twice the
workers when ``spool.max_in_flight = 0``): added workers sat idle behind the old limit."""

from __future__ import annotations

from pathlib import Path

import pytest
import waiting
from daemonthread import Running, push_config
from tomlfile import to_toml

from chworkers.daemon import config
from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)


def toml(state: Path, url: str, workers: int) -> str:
    pipeline = {"create": "n UInt64, s String", "engine": "MergeTree ORDER BY n"}
    data = push_config(
        state, url, supervisor={"workers": workers}, spool={"fsync": False}, pipeline=pipeline
    )
    return to_toml(data)


def test_sighup_resizes_the_dispatchers_in_flight_limit(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    path = tmp_path / "chworkers.toml"
    url = f"{endpoint.url}/{database}"
    path.write_text(toml(tmp_path / "state", url, 1))
    running = Running(config.load(path, env={}))
    daemon = running.daemon
    try:
        assert daemon.dispatcher.max_in_flight == 2  # twice the one worker
        path.write_text(toml(tmp_path / "state", url, 3))
        daemon.request_reload()
        waiting.wait_for(lambda: len(daemon.supervisor.stats().workers) == 3, timeout=30)
        waiting.wait_for(lambda: daemon.dispatcher.max_in_flight == 6, timeout=10)
    finally:
        assert running.stop() == 0
