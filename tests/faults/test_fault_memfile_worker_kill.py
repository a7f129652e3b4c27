"""Workers killed while they send a batch from its memory file: every row once.

A daemon batch goes from the worker's memory file as it is (a view, no copy; it is
scanned for epoch numbers in place and copied only when rewritten), no longer copied out
first (issue 11, one worker). A worker SIGKILLed while it sends such a batch, or while
it waits for the answer, leaves a batch that may have landed: it is sent again under its
token, by a new worker, from the spool. The rows all land once, with the timestamps
they meant.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from daemonthread import Running, daemon_config
from drillprocs import descendants
from faultproxy import FaultProxy
from waiting import wait_for

pytestmark = pytest.mark.timeout(240)

ROWS = 40_000  # 4 batches of 10,000 rows, about 1.4 MB each
T = 1_796_119_200  # 2026-12-01T10:00:00Z


def _lines() -> bytes:
    out = []
    for i in range(ROWS):
        if i % 500 == 7:  # milliseconds: the batch holding it is rewritten
            out.append(
                b'{"n":%d,"ts":%d,"t64":%d,"pad":"%s"}\n' % (i, T + i, T * 1000 + i, b"y" * 80)
            )
        else:
            out.append(
                b'{"n":%d,"ts":%d,"t64":"2026-12-01T10:00:00Z","pad":"%s"}\n'
                % (i, T + i, b"x" * 80)
            )
    return b"".join(out)


def _workers() -> list[int]:
    """The daemon's workers: forked by its fork server, a child of this process."""
    return [
        p.pid
        for p in descendants(os.getpid())
        if "forkserver" in p.cmdline and p.ppid != os.getpid()
    ]


def test_workers_killed_mid_request_leave_every_row_once(
    tmp_path: Path, fault_proxy: FaultProxy, database: str, ch_client: Any
) -> None:
    source = tmp_path / "in.json"
    source.write_bytes(_lines())
    cfg = daemon_config(
        tmp_path / "state",
        f"{fault_proxy.url}/{database}",
        {
            "source": "file",
            "paths": [str(source)],
            "create": "n UInt64, ts DateTime, t64 DateTime64(3), pad String",
            "engine": "MergeTree ORDER BY n SETTINGS non_replicated_deduplication_window = 1000",
            "max_rows": 10_000,
            "max_delay": "50ms",
        },
    )
    cfg["supervisor"]["workers"] = 1
    fault_proxy.set("delay", delay=0.3)  # answers held back: the worker is mid-request
    rng = random.Random(6)
    running = Running(cfg)
    killed = 0
    try:
        deadline = time.monotonic() + 120
        while killed < 3 and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.1, 0.4))
            workers = _workers()
            if workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(workers[0], signal.SIGKILL)
                    killed += 1
        fault_proxy.set("pass")
        assert killed == 3, "no worker to kill"

        def landed() -> bool:
            return int(ch_client.command("SELECT count() FROM ev")) >= ROWS

        wait_for(landed, timeout=120)
        time.sleep(1)  # a duplicate would show by now
    finally:
        fault_proxy.set("pass")
        running.stop()
    count, distinct, seconds, millis = ch_client.query(
        "SELECT count(), uniqExact(n), countIf(toUnixTimestamp(ts) = 1796119200 + n), "
        "countIf(n % 500 = 7 AND toUnixTimestamp64Milli(t64) = 1796119200000 + n) FROM ev"
    ).result_rows[0]
    assert (count, distinct) == (ROWS, ROWS)
    assert seconds == ROWS  # whole seconds, sent as they were
    assert millis == ROWS // 500  # milliseconds read by magnitude, in the rewritten batches
