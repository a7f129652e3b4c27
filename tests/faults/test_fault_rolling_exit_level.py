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


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_exits_of_a_rolling_restart_are_not_warnings() -> None:
    # A handler of its own on the chworkers logger: caplog's sits on the root logger,
    # which a daemon test earlier in the same process may have reconfigured.
    logger = logging.getLogger("chworkers")
    records, level = _Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        with Supervisor(workers=2, start_method="fork") as sup:
            assert sup.restart_workers(timeout=60) == 2
            assert sup.call(sum, [1, 2]).result(30) == 3
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    messages = [r.getMessage() for r in records.records]
    exits = [r for r in records.records if "exited with code 0: rolling" in r.getMessage()]
    assert len(exits) == 2, messages
    assert all(r.levelno == logging.INFO for r in exits), [
        (r.levelname, r.getMessage()) for r in exits
    ]
