"""``*WithNames`` formats: the header reaches every batch, every replay and every half of
a split, and a file source that resumes past the header still sends it."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from waiting import wait_for

from chworkers.daemon import config
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse

# The header names the columns in the opposite order to the table's: a batch that lost
# it cannot land right.
HEADERS = {"CSVWithNames": b"s,n\n", "TSVWithNames": b"s\tn\n"}
SEP = {"CSVWithNames": b",", "TSVWithNames": b"\t"}
BAD = {70_000, 70_001, 99_999, 130_005}


def rows(fmt: str, start: int, stop: int) -> bytes:
    sep = SEP[fmt]
    return b"".join(
        (b"row %d%sx%d\n" if i in BAD else b"row %d%s%d\n") % (i, sep, i)
        for i in range(start, stop)
    )


def make_config(tmp_path: Path, url: str, fmt: str, **extra: Any) -> Any:
    return config.load(
        data={
            "state_dir": str(tmp_path / "state"),
            "metrics": {"port": 0},  # never the default 9363: it may be taken
            "clickhouse": {"url": url, "pool": {"retry": {"initial_backoff": 0.05}}},
            "supervisor": {"workers": 2, "graceful_timeout": 2.0},
            "spool": {"fsync": False, "retry_backoff_max": 0.5},
            "pipelines": [
                {
                    "name": "p",
                    "table": "ev",
                    "source": "file",
                    "format": fmt,
                    "paths": [str(tmp_path / "in.data")],
                    "max_rows": 30_000,
                    "max_delay": "50ms",
                    **extra,
                }
            ],
        },
        env={},
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["CSVWithNames", "TSVWithNames"])
def test_header_in_every_batch_replay_split_half_and_resumed_file(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client, fmt: str
) -> None:
    url = f"{endpoint.url}/{database}"
    source = tmp_path / "in.data"
    source.write_bytes(HEADERS[fmt] + rows(fmt, 0, 120_000))  # more than one read: batches
    # First run: the table is missing, so every batch stays spooled (held).
    daemon = Daemon(make_config(tmp_path, url, fmt))
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", daemon.run()))
    thread.start()
    try:
        assert daemon.wait_ready(60)
        wait_for(lambda: daemon.totals.rows_read >= 120_000, timeout=60)
        wait_for(lambda: daemon.totals.failures >= daemon.spool.stats()["batches"], timeout=60)
        assert daemon.spool.stats()["batches"] >= 2
    finally:
        daemon.request_stop()
        thread.join(60)
    assert result.get("code") == 0
    ch_client.command(
        "CREATE TABLE ev (n UInt64, s String) ENGINE = MergeTree ORDER BY n "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    # More rows after the saved position: the next run resumes past the header.
    with source.open("ab") as fh:
        fh.write(rows(fmt, 120_000, 140_000))
    # Second run: the spooled batches are replayed, the new rows read; bad rows are
    # split out of their batches.
    daemon = Daemon(make_config(tmp_path, url, fmt))
    assert daemon.run() == 0
    good = 140_000 - len(BAD)
    count, distinct, matched = ch_client.query(
        "SELECT count(), uniqExact(n), countIf(s = concat('row ', toString(n))) FROM ev"
    ).result_rows[0]
    assert (count, distinct, matched) == (good, good, good)
    letters = [
        json.loads(line)
        for path in (tmp_path / "state" / "dead-letter" / "ev").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert sorted(e["record"] for e in letters) == sorted(
        rows(fmt, i, i + 1).decode().rstrip("\n") for i in BAD
    )
    assert {e["reason"] for e in letters} == {"rejected"}
