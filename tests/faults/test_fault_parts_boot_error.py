"""A batch that failed because its workers could not start is no TOO_MANY_PARTS.

A WorkerBootError carries the last worker's error as text (``last_error = "exit code
1"``), where RetriesExhaustedError carries an exception; the parts check followed
``last_error`` into the string and raised AttributeError ('str' object has no attribute
'__cause__') on the daemon's completion thread, which logged "completing batch N
failed" with a traceback for every batch failed so instead of recording the failure.
"""

from __future__ import annotations

from chworkers.daemon.options import PartsSettings
from chworkers.daemon.partspressure import PartsPressure, is_too_many_parts
from chworkers.errors import RetriesExhaustedError, WorkerBootError


def test_a_boot_failure_with_its_last_error_as_text_is_not_too_many_parts() -> None:
    boot = WorkerBootError(
        "5 worker processes in a row died while starting", failures=5, last_error="exit code 1"
    )
    assert not is_too_many_parts(boot)
    wrapped = RetriesExhaustedError("gave up", attempts=3, last_error=boot)
    assert not is_too_many_parts(wrapped)
    parts = PartsPressure(PartsSettings())
    parts.failed("db.events", boot)  # no slow-down, and no error
    assert parts.factor("db.events") == 1
