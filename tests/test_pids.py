from __future__ import annotations

import os
import subprocess
import sys
import time

from chworkers.pids import alive


def test_running_zombie_and_reaped() -> None:
    assert alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while alive(child.pid):  # exits, then sits as a zombie until reaped: gone either way
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.wait()
    assert not alive(child.pid)
