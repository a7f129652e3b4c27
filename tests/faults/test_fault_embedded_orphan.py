"""The embedded child outlives a parent that dies while it starts (found by the matrix).

The daemon restarts its embedded ClickHouse when it dies; if the daemon is then killed
(-9, the watchdog, the OOM killer) before the new child printed its ready line, the child
found nobody reading that line: ``print`` raised BrokenPipeError, its ``--exit-with-parent``
watch asked a serve loop that never ran to stop, and the child went on holding the data
directory and the port for good, so the next daemon could not start its own. The
``embedded-killed`` scenario of bench_faults.py hit it in 1 round of 3.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import clickhouse_connect
import pytest
from drillbase import wait_until
from drillprocs import process_table, still_running

pytestmark = pytest.mark.timeout(120)


def test_the_child_stops_when_its_parent_died_before_it_was_ready(tmp_path: Path) -> None:
    from chworkers.embedded import EmbeddedClickHouse

    # A data directory with a table in it, as a daemon's is; its endpoint SIGKILLed.
    first = EmbeddedClickHouse(tmp_path / "data").start()
    client = clickhouse_connect.get_client(host=first.host, port=first.port)
    client.command("CREATE TABLE ev (id UInt64) ENGINE = MergeTree ORDER BY id")
    client.command("INSERT INTO ev SELECT number FROM numbers(1000)")
    client.close()
    first.kill()
    # A parent that starts the child as EmbeddedClickHouse does (ready line on a pipe,
    # --exit-with-parent) and dies at once, before the child can be ready.
    parent = f"""
import os, subprocess, sys
child = subprocess.Popen(
    [sys.executable, "-m", "chworkers", "embedded", "--path", {str(tmp_path / "data")!r},
     "--port", "0", "--exit-with-parent", str(os.getpid())],
    stdout=subprocess.PIPE, stderr=open({str(tmp_path / "child.log")!r}, "wb"),
    stdin=subprocess.DEVNULL, start_new_session=True,
)
print(child.pid, flush=True)
os._exit(0)
"""
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, timeout=60)
    child_pid = int(out.stdout)
    child = [p for p in process_table().values() if p.pid == child_pid]
    try:
        assert wait_until(lambda: not still_running(child), 30, "child gone"), (
            "the embedded child still runs 30 s after its parent died:\n"
            + (tmp_path / "child.log").read_text(errors="replace")[-2000:]
        )
    finally:
        for proc in still_running(child):
            os.kill(proc.pid, signal.SIGKILL)
    log = (tmp_path / "child.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-2000:]
    # The data directory is free again: another endpoint can open it.
    started = time.monotonic()
    with EmbeddedClickHouse(tmp_path / "data") as ch:
        assert ch.running
    assert time.monotonic() - started < 60
