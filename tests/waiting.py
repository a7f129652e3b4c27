"""Polling helper shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    cond: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01, *, what: str = ""
) -> None:
    """Poll ``cond`` until it holds; fail the test after ``timeout`` seconds (saying
    ``what`` was waited for, when given)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what}" if what else f"condition not met within {timeout} s"
        )
        time.sleep(interval)
