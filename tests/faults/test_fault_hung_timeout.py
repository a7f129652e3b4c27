"""``hung_timeout`` and the longest request agree: a worker that waits on one slow but
healthy request is not killed as hung, and a configuration where it would be is
warned about."""

from __future__ import annotations

import logging

import pytest

from chworkers.clickhouse.dsn import ConnectionConfig
from chworkers.workers.options import SupervisorOptions
from chworkers.workers.supervisor import Supervisor


def test_default_hung_timeout_outlasts_the_longest_request() -> None:
    config = ConnectionConfig()
    longest = config.connect_timeout + config.send_receive_timeout
    assert SupervisorOptions().hung_timeout > longest


def test_a_hung_timeout_below_the_request_timeout_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="chworkers.workers.supervisor"):
        Supervisor("http://127.0.0.1:9/?send_receive_timeout=300", hung_timeout=120)
    assert any("hung_timeout (120 s)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chworkers.workers.supervisor"):
        Supervisor("http://127.0.0.1:9/", hung_timeout=400)
    assert not [r for r in caplog.records if "hung_timeout" in r.getMessage()]
