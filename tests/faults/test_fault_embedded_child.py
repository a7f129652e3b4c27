"""The daemon's own embedded ClickHouse child dies (issue 9, defect 6).

Nobody used to notice: no log line, health 200, and nothing inserted until someone
restarted it by hand. Now the daemon's keeper notices within a fraction of a second,
logs it, restarts the child on the same data directory and port (the workers' URL stays
valid), counts it in ``chworkers_embedded_restarts_total``, reports it in health while
it is down, and every row lands exactly once.
"""

from __future__ import annotations

import time

import pytest
from drillbase import wait_until
from harness import Drill, file_pipeline

pytestmark = pytest.mark.timeout(300)


def test_the_child_killed_twice_mid_ingest_is_restarted_and_every_row_lands_once(
    own_drill: Drill,
) -> None:
    drill = own_drill
    feed = drill.file_feed(30_000, chunk=500, pause=0.05)
    daemon = drill.make_daemon([file_pipeline(feed)])
    daemon.start()
    feed.start()
    url = None
    for round_ in range(2):
        drill.wait_rows(5_000 * (round_ + 1))
        pid = daemon.kill_embedded_child()
        drill.note(f"killed the embedded child {pid}")
        assert wait_until(
            lambda pid=pid: daemon.embedded_child() not in (None, pid), 60, "restarted"
        ), drill.fail("the embedded child was not restarted")
        url = url or daemon.embedded_url
        assert daemon.embedded_url == url  # same port: the workers' URL stays valid
        time.sleep(drill.rng.uniform(0.2, 1.0))
    feed.join()
    drill.settle()
    drill.verify()
    assert daemon.metric("chworkers_embedded_restarts_total") == 2
    assert daemon.metric("chworkers_embedded_up") == 1
    log = daemon.log()
    assert log.count(") died: killed by SIGKILL after ") == 2
    assert log.count("embedded ClickHouse restarted") == 2
    daemon.terminate(within=20)
