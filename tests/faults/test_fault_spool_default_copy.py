"""A file read once and removed while ClickHouse is down loses nothing by default.

Spooling a file read once by reference (e2d3c91) was the default: the spool held only
where each batch's records were in the file. A job that removes or moves files once the
daemon has read them, while ClickHouse was down, left every spooled batch pointing at a
file that was gone: the rows were logged as lost, and the default became a copy again.
Reference is the default once more, now that the spool keeps a hard link to each file
it references and copies the batches that have to wait (test_fault_spool_links).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from daemonthread import Running, count
from faultproxy import FaultProxy
from readbyref import file_behind_an_outage
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(180)
def test_a_file_removed_after_it_was_read_is_still_inserted(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    ch_client: Client,
    fault_proxy: FaultProxy,
) -> None:
    # ClickHouse unreachable: batches wait in the spool.
    data, cfg = file_behind_an_outage(tmp_path, database, ch_client, fault_proxy)
    running = Running(cfg)
    try:
        wait_for(lambda: running.daemon.spool.stats()["batches"] == 5, timeout=60)
        data.unlink()  # read, so a cleanup job takes it away
        time.sleep(0.5)
        fault_proxy.set("pass")
        wait_for(lambda: count(endpoint, database) == (5000, 5000), timeout=120)
    finally:
        running.stop()
