"""Regression test: state gauges are computed when Prometheus scrapes (issue 9, item 10).

``chworkers_spool_oldest_age_seconds`` (and the spool's size) used to be set only when a
batch was put or removed, so during an outage with no new data the age stayed frozen and
ChworkersSpoolOld could never fire. Here ClickHouse refuses every connection, one batch
waits in the spool, and nothing else happens: two scrapes seconds apart must show it
getting older.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chworkers.daemon import config
from chworkers.daemon.service import Daemon


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def refused_url() -> str:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/db"


@pytest.mark.timeout(120)
def test_spool_age_grows_between_scrapes_with_clickhouse_down(tmp_path: Path) -> None:
    cfg = config.load(
        data={
            "state_dir": str(tmp_path / "state"),
            "clickhouse": {"url": refused_url(), "pool": {"retry": {"max_attempts": 1}}},
            "supervisor": {"workers": 1, "graceful_timeout": 1.0},
            "metrics": {"port": 0},
            "spool": {"fsync": False, "retry_backoff_max": 60.0},
            "pipelines": [{"name": "in", "source": "stdin", "table": "ev", "max_rows": 10}],
        },
        env={},
    )
    stdin_r, stdin_w = socket.socketpair()
    reader = stdin_r.makefile("rb")
    daemon = Daemon(cfg, stdin=reader)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        assert daemon.wait_ready(60)
        assert daemon.metrics_url is not None
        stdin_w.sendall(b"".join(b'{"n":%d}\n' % i for i in range(10)))  # one batch
        deadline = time.monotonic() + 30
        while scrape(daemon.metrics_url)["chworkers_spool_batches"] < 1:
            assert time.monotonic() < deadline, "the batch never reached the spool"
            time.sleep(0.1)
        first = scrape(daemon.metrics_url)
        time.sleep(2.5)
        second = scrape(daemon.metrics_url)
        assert second["chworkers_spool_batches"] == 1
        assert second["chworkers_spool_bytes"] > 0
        grown = second["chworkers_spool_oldest_age_seconds"]
        assert grown >= first["chworkers_spool_oldest_age_seconds"] + 2.0, (first, second)
    finally:
        stdin_w.close()
        daemon.request_stop()
        thread.join(90)
        reader.close()
        stdin_r.close()
    assert not thread.is_alive()
