"""What every part of the fault drill harness shares (:mod:`harness`): the drill's
table, how long it waits, how it fails, how it polls."""

from __future__ import annotations

import time
from collections.abc import Callable

#: The table every drill fills; ``id`` is unique per row sent.
SCHEMA = "id UInt64, src LowCardinality(String), s String"
TABLE = "ev"
#: The generator pipeline's table (its rows have no id; whole rows are distinct).
GEN_TABLE = "gen"
POISON_PREFIX = "poison-"

#: How long a drill waits for anything (start-up, a count, a drain) on a loaded machine.
PATIENCE = 120.0


class DrillError(AssertionError):
    """A drill found rows lost, duplicated or stuck; the message carries the seed."""


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> bool:
    """Poll ``cond`` for up to ``timeout`` seconds; whether it came true (never raises)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return True
        except Exception:
            pass  # a query during an outage fails: poll again
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
