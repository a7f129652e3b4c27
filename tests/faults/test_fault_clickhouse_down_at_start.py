"""ClickHouse down when the daemon starts (issue 9, defect 5).

The daemon used to create its tables before opening its intake: with ClickHouse down it
took no data at all, gave up after its retries and exited, and systemd restarted it in
a loop. Now the spool and the intake open at once, the tables are created in the
background once ClickHouse answers, batches for a table wait for it in the spool, and
everything taken in lands exactly once when ClickHouse comes up.
"""

from __future__ import annotations

import time

import pytest
from drillbase import wait_until
from harness import Drill, file_pipeline, push_pipeline

pytestmark = pytest.mark.timeout(300)


def test_intake_opens_while_clickhouse_is_down_and_everything_lands_once(drill: Drill) -> None:
    drill.proxy.down()  # before the daemon starts
    feed = drill.file_feed(20_000, chunk=1000, pause=0.02)
    daemon = drill.make_daemon(
        [file_pipeline(feed), push_pipeline(table="ev")],
        # READY=1 comes after startup_wait (2 s here, 15 by default) with ClickHouse down.
        {"health": {"stall": 1.0}, "clickhouse": {"startup_wait": 2.0}},
    )
    daemon.start()  # READY=1 with ClickHouse down: the intake is open
    push = drill.push_clients(clients=2, requests=10, rows=100).start()
    feed.start()
    feed.join()
    push.join()  # every push answered 202 while ClickHouse is still down
    client = drill.target.client(daemon)
    try:  # nothing reached ClickHouse: not even the table
        assert client.command("EXISTS TABLE ev") == 0
    finally:
        client.close()
    status, body = daemon.healthz()
    components = {p["component"] for p in body["problems"]}
    assert status == 200 and body["status"] == "degraded", body
    assert "tables" in components and "inserts" in components, body
    assert daemon.running() and daemon.starts == 1
    assert wait_until(  # systemctl status says it too
        lambda: any(
            m.fields.get("STATUS", "").startswith("degraded: ") for m in daemon.notify.snapshot()
        ),
        10,
        "STATUS=",
    )
    time.sleep(2)  # a few more rounds of failing CREATEs: the daemon stays up
    assert daemon.running()
    drill.proxy.up()
    drill.settle()
    drill.verify()
    assert drill.count() == 20_000 + 2_000
    assert daemon.healthz() == (
        200,
        {"status": "ok", "problems": [], "state": "running"},
    )
    assert "table ev is ready; " in daemon.log()
    daemon.terminate(within=20)


def test_sigterm_while_waiting_for_clickhouse_at_start_stops_at_once(drill: Drill) -> None:
    """Start-up waits up to 15 s for the tables before READY=1; a SIGTERM meanwhile
    must not wait that out, and what was taken in stays spooled for the next start."""
    drill.proxy.down()
    feed = drill.file_feed(5_000, chunk=1000, pause=0)
    feed.write_all_now()
    daemon = drill.make_daemon([file_pipeline(feed)], {"supervisor": {"graceful_timeout": 2.0}})
    daemon.start(wait_ready=False)
    assert wait_until(lambda: "cannot be created yet" in daemon.log(), 60, "first CREATE failed")
    assert not daemon.ready()
    took = daemon.terminate(within=10)
    drill.note(f"stopped {took:.1f} s after SIGTERM, before READY")
    drill.proxy.up()
    daemon.start()
    drill.settle()
    drill.verify()
    daemon.terminate(within=20)
