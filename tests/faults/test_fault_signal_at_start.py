"""A signal while the daemon starts does not make it say ClickHouse is unreachable.

SIGUSR2 (or SIGHUP, SIGTERM) during start-up cuts short the wait for the tables, as it
should; the daemon then logged "ClickHouse is not reachable yet: ..." although ClickHouse
answered and the tables were merely not created yet.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from daemonthread import daemon_config

from chworkers.daemon import config
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(180)
def test_a_rolling_restart_asked_at_start_is_not_reported_as_clickhouse_down(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = config.load(
        data=daemon_config(tmp_path / "state", f"{endpoint.url}/{database}", {"source": "http"}),
        env={},
    )
    daemon = Daemon(cfg)
    daemon.request_restart_workers()  # queued before run(): as a SIGUSR2 during start-up
    errors: list[BaseException] = []

    def run() -> None:
        try:
            daemon.run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            daemon._ready.set()

    caplog.set_level(logging.INFO, logger="chworkers")
    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert daemon.wait_ready(120) and not errors, errors
    finally:
        daemon.request_stop()
        thread.join(120)
    assert not thread.is_alive() and not errors, errors
    messages = [r.getMessage() for r in caplog.records]
    assert any("replacing the workers" in m for m in messages), messages
    assert not any("not reachable" in m for m in messages), messages
