"""The supervisor's loop spun while a table waited on its limits for a slot or a result:
it was told to look again at the table's next start time, already past, so it polled
with a timeout of 0 until the insert holding the slot ended (a core burnt for as long
as an insert takes). Now only a table that waits on time alone sets the loop's timeout.

Measured as the CPU time of the loop's thread (from /proc) while one slow insert holds
the only slot and others wait: a few milliseconds of 0.1 s polls, against a busy loop."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from faultproxy import FaultProxy

from chworkers import Supervisor, TableLimit

pytestmark = pytest.mark.timeout(90)


def loop_cpu_seconds() -> float:
    thread = next(t for t in threading.enumerate() if t.name == "chworkers-supervisor")
    with open(f"/proc/self/task/{thread.native_id}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_loop_sleeps_while_a_table_waits_for_its_slot(
    fault_proxy: FaultProxy, ch_client: Any, database: str
) -> None:
    ch_client.command("CREATE TABLE hot (n UInt64) ENGINE = MergeTree ORDER BY n")
    url = f"http://127.0.0.1:{fault_proxy.port}/{database}"
    limit = TableLimit(max_concurrent_inserts=1, max_inserts_per_second=100)
    with Supervisor(url, workers=2, start_method="fork", table_limits={"hot": limit}) as sup:
        sup.insert("hot", [[0]], ["n"]).result(60)  # columns looked up
        fault_proxy.set("delay", delay=2.0, times=1)  # the next insert holds the slot 2 s
        first = sup.insert("hot", [[1]], ["n"])
        rest = [sup.insert("hot", [[n]], ["n"]) for n in range(2, 5)]
        time.sleep(0.4)  # the first is in its delay, the rest are held back
        assert sup.stats().table_limits["hot"]["waiting"] == 3
        before = loop_cpu_seconds()
        time.sleep(1.2)
        spent = loop_cpu_seconds() - before
        assert [f.result(60) for f in [first, *rest]] == [1] * 4
    assert spent < 0.2, f"the loop used {spent:.2f} s of CPU in 1.2 s while waiting"
