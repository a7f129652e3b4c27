"""The first SIGTERM after the sources ran out is not called a "second signal".

A one-shot run (stdin, files read once, a generator with a count) whose last batches
could not be inserted (a missing table, an outage) waits for them; a SIGTERM then stops
it at once, which is right, but the log said "second signal: stopping now" for the
first signal the daemon had received.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from daemonthread import Running, daemon_config
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(120)
def test_first_signal_while_waiting_for_the_last_inserts(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chworkers")
    data = daemon_config(
        tmp_path / "state",
        f"{endpoint.url}/{database}",
        {"source": "generator", "generator_count": 10, "table": "missing", "create": ""},
    )
    running = Running(data)
    try:
        wait_for(
            lambda: "UNKNOWN_TABLE" in caplog.text, timeout=60, what="the batch held for its table"
        )
        # The batch can fail before the loop sees the generator done: the signal must come
        # once the run waits for its last inserts (its stop begun, /readyz 503).
        wait_for(running.daemon._stopping.is_set, timeout=60, what="the sources to run out")
    finally:
        code = running.stop()
    assert code == 0
    assert "received SIGTERM while waiting for the last inserts: stopping now" in caplog.text
    assert "second signal" not in caplog.text
