"""The run summary's rate of a slow feed is not rounded to nothing.

A one-shot run over a trickle (40 rows in 10 minutes) printed "(0 rows/s)" next to the
40 rows it inserted (found by a user trial).
"""

from __future__ import annotations

import time
from pathlib import Path

from chworkers.daemon.totals import Totals, per_second


def test_a_slow_feed_has_a_rate_above_zero(tmp_path: Path) -> None:
    totals = Totals(started=time.monotonic() - 600, rows_inserted=40, batches=4)
    first = totals.summary(tmp_path, 0).splitlines()[0]
    assert "(0.0667 rows/s)" in first, first


def test_rates_read_as_people_write_them() -> None:
    assert per_second(0) == "0"
    assert per_second(0.5) == "0.5"
    assert per_second(12.345) == "12.3"
    assert per_second(99.6) == "99.6"
    assert per_second(1_234_567.8) == "1,234,568"
