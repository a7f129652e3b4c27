"""The daemon's worker pool: rolling restarts (SIGUSR2) with ingest going on and the
pipeline's insert limits applied, autoscaling through a burst; exact counts."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import waiting
from chclients import make_client
from daemonthread import Running, daemon_config, lines
from faultproxy import FaultProxy

from chworkers import TableLimit
from chworkers.daemon.pipelinelist import table_limits
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)


def push(port: int, start: int, stop: int, step: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for base in range(start, stop, step):
            conn.request("POST", "/ingest/ev", body=lines(base, base + step))
            resp = conn.getresponse()
            assert resp.status == 202, resp.read()
            resp.read()
            time.sleep(0.01)
    finally:
        conn.close()


def counts(endpoint: EmbeddedClickHouse, database: str) -> tuple[int, int]:
    client = make_client(endpoint, database=database)
    try:
        count, distinct = client.query("SELECT count(), uniqExact(n) FROM ev").result_rows[0]
        return int(count), int(distinct)
    finally:
        client.close()


def test_sigusr2_replaces_the_workers_while_ingest_goes_on_exact_counts(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    cfg: dict[str, Any] = daemon_config(
        tmp_path / "state",
        f"{endpoint.url}/{database}",
        {
            "source": "http",
            "max_delay": "50ms",
            "max_concurrent_inserts": 1,
            "max_inserts_per_second": 100,
        },
    )
    running = Running(cfg)
    daemon = running.daemon
    port = urlsplit(daemon.ingest_url).port
    assert port is not None
    old = {w["pid"] for w in daemon.supervisor.stats().workers}
    pusher = threading.Thread(target=push, args=(port, 0, 10_000, 200))
    pusher.start()
    time.sleep(0.3)
    daemon.request_restart_workers()  # what SIGUSR2 does
    assert pusher.is_alive()  # ingest goes on while the workers are replaced
    pusher.join(60)
    waiting.wait_for(
        lambda: daemon.supervisor.stats().restarts.get("rolling", 0) == 2,
        timeout=60,
        what="both workers replaced",
    )
    waiting.wait_for(lambda: daemon.totals.rows_inserted == 10_000, timeout=60)
    new = {w["pid"] for w in daemon.supervisor.stats().workers}
    assert running.stop() == 0
    assert len(new) == 2 and not new & old
    assert counts(endpoint, database) == (10_000, 10_000)
    sample = daemon.supervisor.registry.get_sample_value
    assert (sample("chworkers_table_limit_wait_seconds_count", {"table": "ev"}) or 0) > 0


def test_pipelines_into_one_table_share_the_tighter_limits() -> None:
    base = {"source": "http", "table": "ev"}
    a = PipelineSettings(name="a", max_concurrent_inserts=2, **base)
    b = PipelineSettings(name="b", max_concurrent_inserts=4, max_inserts_per_second=1, **base)
    c = PipelineSettings(name="c", source="http", table="other")
    assert table_limits([a, b, c]) == {"ev": TableLimit(2, 1.0)}


def test_autoscaling_follows_a_burst_of_ingest_exact_counts(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, fault_proxy: FaultProxy
) -> None:
    fault_proxy.set("delay", delay=0.2)  # each insert takes a while: 1 worker falls behind
    cfg: dict[str, Any] = daemon_config(
        tmp_path / "state",
        f"http://127.0.0.1:{fault_proxy.port}/{database}",
        {"source": "http", "max_delay": "20ms"},
    )
    cfg["supervisor"] = {
        "workers": 1,
        "min_workers": 1,
        "max_workers": 3,
        "scale_up_after": "300ms",
        "scale_down_after": "1s",
        "scale_up_min_idle_cpu": 0,  # the test machine is shared
    }
    cfg["clickhouse"]["pool"]["max_connections"] = 3
    running = Running(cfg)
    daemon = running.daemon
    port = urlsplit(daemon.ingest_url).port
    assert port is not None
    assert daemon.dispatcher.max_in_flight == 6  # twice max_workers: a backlog can show
    sup = daemon.supervisor
    serving = lambda: sum(1 for w in sup.stats().workers if w["state"] != "stopping")  # noqa: E731
    push(port, 0, 4_000, 100)  # 40 batches, ~8 s of inserts for one worker
    waiting.wait_for(lambda: serving() == 3, timeout=30, what="scaled up to 3")
    waiting.wait_for(lambda: daemon.totals.rows_inserted == 4_000, timeout=60)
    waiting.wait_for(lambda: serving() == 1, timeout=30, what="scaled down to 1")
    scaled = {
        d: sup.registry.get_sample_value("chworkers_worker_scaling_total", {"direction": d})
        for d in ("up", "down")
    }
    assert running.stop() == 0
    assert scaled == {"up": 2, "down": 2}
    assert counts(endpoint, database) == (4_000, 4_000)
