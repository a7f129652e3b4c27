"""Rows of a replay that ClickHouse deduplicated are not counted as inserted.

ClickHouse's answer to an insert counts, in ``written_rows``, the rows of blocks it
dropped as duplicates of blocks it already had (same deduplication token) as well, and
says nothing of the drop. A batch recovered from the spool after a crash that came
between its insert and its removal was counted again: the summary's "inserted N rows"
and ``chworkers_rows_inserted_total`` showed more rows than ``count()``. Replays (a
recovered batch, which the crashed run may have counted) are now counted apart, as
replayed. A request sent again within the run after a lost answer is no replay: no
attempt of it was counted, so it counts once, as inserted, whichever attempt landed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from daemonthread import count, daemon_config, lines, metric_total
from faultproxy import FaultProxy

from chworkers import ConnectionPool
from chworkers.daemon import config
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.service import Daemon
from chworkers.daemon.spool import Spool
from chworkers.embedded import EmbeddedClickHouse


def run_stdin(state: Path, url: str, data: Path) -> Daemon:
    cfg = daemon_config(state, url, {"source": "stdin", "max_rows": 1000})
    with open(data, "rb") as stdin:
        daemon = Daemon(config.load(data=cfg, env={}), stdin=stdin)
        assert daemon.run() == 0
    return daemon


@pytest.mark.timeout(120)
def test_a_recovered_batch_clickhouse_already_had_is_not_counted_as_inserted(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    state = tmp_path / "state"
    url = f"{endpoint.url}/{database}"
    # The last run spooled a batch, inserted it and died before removing its file.
    batch = Spool(state / "spool", SpoolSettings(fsync=False)).put(
        "ev", lines(0, 300), format="JSONEachRow", rows=300, pipeline="p"
    )
    pool = ConnectionPool(url, {"max_connections": 1})
    try:
        pool.with_connection(
            lambda c: c.command(
                "CREATE TABLE ev (n UInt64, s String) ENGINE = MergeTree ORDER BY n "
                "SETTINGS non_replicated_deduplication_window = 1000"
            )
        )
        pool.with_connection(
            lambda c: c.raw_insert(
                "ev", batch.payload, fmt="JSONEachRow", deduplication_token=batch.token
            )
        )
    finally:
        pool.close()
    data = tmp_path / "in.json"
    data.write_bytes(lines(300, 2300))

    daemon = run_stdin(state, url, data)

    assert count(endpoint, database) == (2300, 2300)
    assert daemon.totals.rows_inserted == 2000  # the replay's 300 were dropped
    assert daemon.totals.rows_replayed == 300
    assert daemon.totals.batches_replayed == 1
    summary = daemon.summary()
    assert "inserted 2,000 rows in " in summary, summary
    assert "replayed 300 rows of 1 batch that may have landed before" in summary, summary
    assert metric_total(daemon.metrics, "chworkers_rows_inserted_total") == 2000
    assert metric_total(daemon.metrics, "chworkers_rows_replayed_total") == 300


@pytest.mark.timeout(120)
def test_a_request_sent_again_after_a_lost_answer_counts_once_as_inserted(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, fault_proxy: FaultProxy
) -> None:
    """The first insert lands but its answer is lost: the worker sends it again, and
    ClickHouse drops it. Nobody counted the first attempt: the rows count once, inserted
    (counted as replayed, the run's 'inserted' fell short of what it added)."""
    state = tmp_path / "state"
    data = tmp_path / "in.json"
    data.write_bytes(lines(0, 500))
    fault_proxy.set("drop", times=1, match=b"INSERT")

    daemon = run_stdin(state, f"{fault_proxy.url}/{database}", data)

    assert count(endpoint, database) == (500, 500)
    assert daemon.totals.rows_inserted == 500
    assert daemon.totals.rows_replayed == 0
    assert metric_total(daemon.metrics, "chworkers_rows_inserted_total") == 500
    assert metric_total(daemon.metrics, "chworkers_rows_replayed_total") == 0
