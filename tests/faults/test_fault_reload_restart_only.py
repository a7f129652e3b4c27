"""SIGHUP says which changed settings it does not apply.

The daemon reloads only the supervisor's settings, the connection budget, the retry
policy and the log level; a changed pipeline, spool, shard list or weights was ignored
silently ("SIGHUP: reloaded c.toml (workers 2)"), so an operator believed it applied.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from daemonthread import Running
from waiting import wait_for

from chworkers.daemon import config
from chworkers.embedded import EmbeddedClickHouse

CONF = """
state_dir = "{state}"
[clickhouse]
url = "{url}"
[supervisor]
workers = 1
[metrics]
port = 0
[spool]
max_bytes = "64MiB"
[[pipelines]]
name = "p"
source = "http"
table = "ev"
create = "n UInt64"
max_delay = "100ms"
"""


@pytest.mark.timeout(180)
def test_sighup_names_the_changes_that_wait_for_a_restart(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "c.toml"
    text = CONF.format(state=tmp_path / "state", url=f"{endpoint.url}/{database}")
    path.write_text(text)
    caplog.set_level(logging.INFO, logger="chworkers")
    running = Running(config.load(path, env={}))
    try:
        path.write_text(
            text.replace("workers = 1", "workers = 2")
            .replace('"64MiB"', '"32MiB"')
            .replace('"100ms"', '"1s"')
        )
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
