"""A stop while ClickHouse is down does not wait out a table's create attempt.

The tables thread waited for a `CREATE TABLE` attempt for up to 120 s, and the daemon's
stop joined that thread: with ClickHouse down, the attempt lasts as long as the retry
policy keeps trying (up to its `deadline`, 5 min by default), so `chworkers run` exited
tens of seconds to minutes after `graceful_timeout` (32 s after a SIGTERM with
`graceful_timeout = "5s"` here), past systemd's TimeoutStopSec, and its health said
"failing: the daemon's loop has not turned" meanwhile. docs/daemon.md promises an exit
a few seconds after `graceful_timeout` whatever ClickHouse is doing.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from daemonthread import Running, daemon_config
from waiting import wait_for

from chworkers.daemon import config


@pytest.mark.timeout(240)
def test_stop_with_clickhouse_down_does_not_wait_for_the_create(
    tmp_path: Path,
) -> None:
    with socket.socket() as closed:  # a port nobody listens on: ClickHouse is down
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    data = daemon_config(tmp_path / "state", f"http://127.0.0.1:{port}/db", {"source": "http"})
    # One create attempt keeps retrying for 200 s (the default deadline is 300 s).
    data["clickhouse"]["pool"]["retry"] = {
        "max_attempts": 10_000,
        "initial_backoff": 0.2,
        "max_backoff": 0.5,
        "deadline": 200,
    }
    data["supervisor"]["graceful_timeout"] = 2
    data["clickhouse"]["startup_wait"] = 1.0
    running = Running(config.load(data=data, env={}))
    wait_for(lambda: running.daemon.tables.pending() == ["ev"], timeout=30, what="tables")
    time.sleep(1)  # the create attempt is under way, retrying
    stopped = threading.Event()
    started = time.monotonic()
    stopper = threading.Thread(target=lambda: (running.stop(230), stopped.set()))
    stopper.start()
    # graceful_timeout (2 s) plus the workers' stop; the attempt alone would take 200 s.
    assert stopped.wait(90), f"still stopping after {time.monotonic() - started:.0f} s"
    stopper.join()
