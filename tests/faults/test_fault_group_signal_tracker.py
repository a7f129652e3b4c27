"""SIGUSR2 and SIGHUP sent to the supervisor's whole process group leave multiprocess's
resource tracker alone.

Before, in a user trial of issue 16, `kill -USR2 -PGID` of `chworkers run` (what
`systemctl kill --signal=SIGUSR2 chworkers` does without `--kill-whom=main`) did the
rolling restart, and also killed the resource tracker, a child in the same group that
ignores SIGINT and SIGTERM but not SIGHUP or SIGUSR2: multiprocess warned "resource_tracker:
process died unexpectedly, relaunching. Some resources might leak." The workers and the
fork server were already immune (they start with those signals blocked).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from chworkers.pids import alive

pytestmark = pytest.mark.timeout(60)

APP = r"""
import sys, time
from multiprocess import resource_tracker
from chworkers import Supervisor

def main():
    sup = Supervisor(workers=1, start_method=sys.argv[1], handle_signals=True)
    sup.start()
    assert sup.call(sum, [1, 2]).result(30) == 3
    print(resource_tracker._resource_tracker._pid, flush=True)
    sup.run()  # until SIGTERM

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_group_signals_do_not_kill_the_resource_tracker(tmp_path: object, method: str) -> None:
    app = os.path.join(str(tmp_path), "app.py")
    with open(app, "w") as fh:
        fh.write(APP)
    proc = subprocess.Popen(
        [sys.executable, app, method],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        tracker = int(proc.stdout.readline())
        assert alive(tracker)
        os.killpg(proc.pid, signal.SIGUSR2)  # a rolling restart, to the whole group
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGHUP)
        time.sleep(1.0)
        assert alive(tracker), "the resource tracker died of a group signal"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    assert "resource_tracker: process died unexpectedly" not in err, err
