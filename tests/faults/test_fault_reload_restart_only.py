"""SIGHUP says which changed settings it does not apply.

The daemon reloads only the supervisor's settings, the connection budget, the retry
policy and the log level; a changed pipeline, spool, shard list or weights was ignored
silently ("SIGHUP: reloaded c.toml (workers 2)"), so an operator believed it applied.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from daemonthread import Running, push_config
from tomlfile import to_toml
from waiting import wait_for

from chworkers.daemon import config
from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(180)
def test_sighup_names_the_changes_that_wait_for_a_restart(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "c.toml"

    def write(workers: int, max_bytes: str, max_delay: str) -> None:
        data = push_config(
            tmp_path / "state",
            f"{endpoint.url}/{database}",
            supervisor={"workers": workers},
            spool={"max_bytes": max_bytes},
            pipeline={"max_delay": max_delay},
        )
        path.write_text(to_toml(data))

    write(1, "64MiB", "100ms")
    caplog.set_level(logging.INFO, logger="chworkers")
    running = Running(config.load(path, env={}))
    try:
        write(2, "32MiB", "1s")
        running.daemon.request_reload()
        wait_for(lambda: "SIGHUP: reloaded" in caplog.text, timeout=60, what="the reload")
    finally:
        running.stop()
    warned = [
        r.getMessage() for r in caplog.records if "take effect only on restart" in r.getMessage()
    ]
    assert warned, caplog.text
    assert warned[0].endswith(": spool.max_bytes 64 MiB -> 32 MiB, pipelines.p"), warned[0]
    assert "workers" not in warned[0]  # applied by the reload itself
