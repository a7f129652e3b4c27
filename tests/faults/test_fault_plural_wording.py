"""User-visible lines say "1 batch", not "1 batches" ("after 1 tasks", "1 times").

Counts in the summary, status line, health problems and log lines were written with a
fixed plural noun; they agree with their number now (chworkers.wording.plural).
"""

from __future__ import annotations

from pathlib import Path

from chworkers.daemon.totals import Totals
from chworkers.ops.health import Stall
from chworkers.wording import plural


def test_plural_agrees_with_its_count() -> None:
    assert plural(1, "batch") == "1 batch"
    assert plural(0, "batch") == "0 batches"
    assert plural(2_500, "row") == "2,500 rows"
    assert plural(1, "entry") == "1 entry" and plural(3, "entry") == "3 entries"
    assert plural(2, "held batch", "held batches") == "2 held batches"
    assert plural(2, "process") == "2 processes"


def test_the_summary_and_the_status_line_of_one_batch(tmp_path: Path) -> None:
    totals = Totals(rows_inserted=1, batches=1, dead_letters=1, failures=1)
    summary = totals.summary(tmp_path, spool_batches=1, broker_batches=1)
    assert "inserted 1 row in 1 batch in " in summary, summary
    assert "spool: 1 batch left in " in summary, summary
    assert "broker: 1 batch not inserted" in summary, summary
    status = totals.status(1, spool_batches=1, spool_bytes=10)
    assert status.startswith("1 row inserted, "), status
    assert status.endswith(", 1 dead letter, 1 failed attempt"), status
    assert "batches" not in summary + status and " rows " not in summary


def test_a_stall_with_one_batch_waiting() -> None:
    now = [0.0]
    stall = Stall(10.0, lambda: 1, clock=lambda: now[0])
    stall.failed(ConnectionError("refused"))
    now[0] += 11
    (problem,) = stall.problems()
    assert "with 1 batch waiting" in problem, problem
