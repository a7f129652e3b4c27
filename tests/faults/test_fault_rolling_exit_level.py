"""A rolling restart's planned worker exits are logged at INFO, not as warnings.

Each old worker of a rolling restart (SIGUSR2) exits because it was asked to; the
supervisor logged "worker-1 (pid ...) exited with code 0: rolling" as a WARNING, one per
worker per deploy, which an operator alerting on warnings would be paged for.
"""

from __future__ import annotations

import logging

import pytest

from chworkers import Supervisor

pytestmark = pytest.mark.timeout(90)


def test_the_exits_of_a_rolling_restart_are_not_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chworkers")
    with Supervisor(workers=2, start_method="fork") as sup:
        assert sup.restart_workers(timeout=60) == 2
        assert sup.call(sum, [1, 2]).result(30) == 3
    exits = [r for r in caplog.records if "exited with code 0: rolling" in r.getMessage()]
    assert len(exits) == 2, [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.INFO for r in exits), [
        (r.levelname, r.getMessage()) for r in exits
    ]
