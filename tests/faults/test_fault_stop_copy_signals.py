"""Only a second SIGTERM or SIGINT cuts the stop's copying of references short.

At a stop the daemon copies the batches still spooled by reference into the spool, for
up to 10 s, "until a second signal": any signal in its queue counted. A SIGHUP arriving
while it stops (logrotate's ``postrotate systemctl reload``, the moment files are
rotated) ended the copying at once and left batches by reference over a restart, their
files then free to be truncated.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from daemonthread import Running, push_config

from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(120)
def test_a_sighup_while_stopping_is_no_second_signal(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    running = Running(push_config(tmp_path / "state", f"{endpoint.url}/{database}"))
    daemon = running.daemon
    stop_dispatcher = daemon.dispatcher.stop
    copy_references = daemon.spool.copy_references
    asked: list[bool] = []

    def dispatcher_stopped() -> None:
        stop_dispatcher()
        daemon.request_reload()  # logrotate reloads while the daemon stops

    def copying(timeout: float = 10.0, stop: object = None) -> int:
        assert callable(stop)
        asked.append(bool(stop()))
        daemon._signals.put(signal.SIGTERM)  # then a real second signal
        asked.append(bool(stop()))
        return copy_references(timeout, stop)

    daemon.dispatcher.stop = dispatcher_stopped  # type: ignore[method-assign]
    daemon.spool.copy_references = copying  # type: ignore[method-assign]
    assert running.stop() == 0
    assert asked == [False, True]
