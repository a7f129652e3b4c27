"""A batch completed again writes its dead letters once.

A confirmed batch is completed in steps: its rejected rows go to the dead letters, then
it is acknowledged to its broker and its spool file removed. When a later step fails (a
broker that does not answer, a spool that turned read-only:
tests/faults/test_fault_spool_remove.py), the batch is tried again: inserted again
(ClickHouse drops its rows by their tokens), its bad rows rejected again, and completed
again, which wrote its dead letters a second time, and a third at the next failure: an
operator replaying them inserted those rows as often. Now a batch's dead letters are
written once per run, however often it is completed.
"""

from __future__ import annotations

import json
from pathlib import Path

from daemonthread import Running, daemon_config

from chworkers.clickhouse.inserts import InsertResult, Rejected
from chworkers.daemon.spool import SpooledBatch
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ServerError


def test_a_batch_completed_twice_writes_its_dead_letters_once(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    running = Running(
        daemon_config(tmp_path / "state", f"{endpoint.url}/{database}", {"source": "http"})
    )
    try:
        daemon = running.daemon
        batch = SpooledBatch(7, "ev", "JSONEachRow", 2, "tok", 0.0, b"", pipeline="p")
        error = ServerError("Cannot parse input", code=27)
        result = InsertResult(1, 10, 3, (Rejected(b'{"n":"x"}', error),))
        # Its completion failed after the dead letters (the file could not be removed):
        # the dispatcher inserts it again and completes it again, with the same rejects.
        daemon._confirmed(batch, result)
        daemon._confirmed(batch, result)
        other = SpooledBatch(8, "ev", "JSONEachRow", 2, "tok2", 0.0, b"", pipeline="p")
        daemon._confirmed(other, result)  # another batch's rejects are its own
    finally:
        running.stop()
    letters = [
        json.loads(line)
        for path in (tmp_path / "state" / "dead-letter").rglob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert [letter["batch"] for letter in letters] == ["tok", "tok2"], letters


def test_a_batch_completed_twice_counts_its_rows_once_as_inserted(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    """Its file could not be removed after its rows were counted: sent again, ClickHouse
    drops them by their token yet says it wrote them; they count as replayed, not as
    inserted a second time (the summary said 'inserted 4 rows' for 2)."""
    url = f"{endpoint.url}/{database}"
    running = Running(daemon_config(tmp_path / "state", url, {"source": "http"}))
    try:
        daemon = running.daemon
        batch = SpooledBatch(7, "ev", "JSONEachRow", 2, "tok", 0.0, b"", pipeline="p")
        daemon._confirmed(batch, InsertResult(2, 10, 1))
        assert daemon._is_replay(batch)  # its next attempt is sent as a replay
        daemon._confirmed(batch, InsertResult(2, 10, 1))
        assert (daemon.totals.rows_inserted, daemon.totals.rows_replayed) == (2, 2)
    finally:
        running.stop()
