"""A ClickHouse outage longer than the host cooldown's growth (issue 9, defect 1).

At the 1,025th consecutive connection failure the host cooldown used to overflow, each
worker's pool leaked its connection slots, and the daemon inserted nothing again until
it was restarted, while ``/healthz`` said 200. Here the daemon's one worker retries
against a refusing ClickHouse with a tiny cooldown and backoff, so that it fails more
than 1,100 times in seconds; when ClickHouse is back everything lands exactly once, and
health said "degraded" (not failing: restarting would not help) during the outage.
"""

from __future__ import annotations

import pytest
from drillbase import wait_until
from harness import Drill, file_pipeline

pytestmark = pytest.mark.timeout(300)

FAILURES = 1_100


def test_1100_failed_connects_then_everything_lands_once(drill: Drill) -> None:
    feed = drill.file_feed(10_000, chunk=500, pause=0.2)
    daemon = drill.make_daemon(
        [file_pipeline(feed)],
        {
            "clickhouse": {
                "pool": {
                    "host_cooldown": 0.0001,
                    "max_host_cooldown": 0.001,
                    "retry": {
                        "max_attempts": 200,  # a task ends (and ships its metrics) often
                        "initial_backoff": 0.0001,
                        "max_backoff": 0.0005,
                        "deadline": 600.0,
                    },
                }
            },
            "supervisor": {"workers": 1},
            "health": {"stall": 1.0},
        },
    )
    daemon.start()
    feed.start()
    drill.wait_rows(1)  # the table exists and data flows
    drill.proxy.down()
    drill.note(f"ClickHouse down at {drill.count()} rows")
    feed.join()

    def transport_errors() -> float:
        return daemon.metric("chworkers_errors_total", kind="transport", code="") or 0.0

    assert wait_until(lambda: transport_errors() >= FAILURES, 120, "failures", interval=0.5), (
        drill.fail(f"only {transport_errors()} failed connects")
    )
    status, body = daemon.healthz()
    assert status == 200 and body["status"] == "degraded", body
    assert any(
        p["component"] == "inserts" and "no insert confirmed" in p["reason"]
        for p in body["problems"]
    ), body
    drill.note(f"{transport_errors():.0f} failed connects; ClickHouse back")
    drill.proxy.up()
    drill.settle()
    drill.verify()
    assert wait_until(lambda: daemon.healthz()[1]["status"] == "ok", 30, "ok")
    daemon.terminate(within=20)
