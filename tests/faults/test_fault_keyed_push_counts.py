"""A push sent again with an Idempotency-Key the run took already counts as a replay.

A client that did not hear its 202 sends the request again with the same key; the
daemon spools it as another batch with the same deduplication token, and ClickHouse
drops it, yet counts its rows as written. The run's summary said "inserted 3,000 rows"
for 1,000 rows pushed three times (1,000 in the table), and so did
``chworkers_rows_inserted_total``. Now a keyed batch whose token another batch of the
run carried first is a replay: "inserted 1,000 rows", "replayed 2,000 rows of 2
batches".
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from daemonthread import Running, count, daemon_config, lines, metric_total
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse


def push(url: str, body: bytes, key: str) -> int:
    request = urllib.request.Request(url, data=body, headers={"Idempotency-Key": key})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return int(resp.status)


@pytest.mark.timeout(180)
def test_a_keyed_push_sent_again_counts_once_as_inserted(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    running = Running(
        daemon_config(tmp_path / "state", f"{endpoint.url}/{database}", {"source": "http"})
    )
    try:
        url = f"{running.daemon.ingest_url}/ingest/ev"
        body = lines(0, 1000)
        for _ in range(3):
            assert push(url, body, "req-1") == 202
        assert push(url, lines(1000, 1500), "req-2") == 202
        wait_for(lambda: running.daemon.totals.batches == 4, timeout=120, interval=0.1)
    finally:
        assert running.stop() == 0
    daemon = running.daemon
    assert count(endpoint, database) == (1500, 1500)
    assert daemon.totals.rows_inserted == 1500
    assert daemon.totals.rows_replayed == 2000
    assert daemon.totals.batches_replayed == 2
    assert "inserted 1,500 rows in 4 batches" in daemon.summary(), daemon.summary()
    assert metric_total(daemon.metrics, "chworkers_rows_inserted_total") == 1500
    assert metric_total(daemon.metrics, "chworkers_rows_replayed_total") == 2000
