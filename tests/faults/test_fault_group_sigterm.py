"""A SIGTERM (or SIGINT) sent to the supervisor's whole process group drains as one sent to
the supervisor alone.

``timeout``, ``kill -TERM -PGID``, ``tini -g``, a shell's job control and systemd with
KillMode=control-group signal every process of the group at once: the supervisor, its
workers and the fork server. The workers used to die on the spot (and, under forkserver,
the fork server too, which made every worker look dead: exit 255), so in-flight tasks
were cut, the exits were counted as crashes, replacements were started during the stop
and tasks ran twice. Now the workers and the fork server leave the stopping to the
supervisor: every task runs once, no worker exit is a crash, nothing is restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

GRACEFUL = 20.0

APP = r"""
import json, os, sys, time
from chworkers import Supervisor
from chworkers.workers.middleware import Middleware

exits = []

class Exits(Middleware):
    worker_side = False
    def after_worker_exit(self, name, pid, reason):
        exits.append(reason)

def work(i, out):
    with open(out + ".started", "a") as f:
        f.write(f"{i}\n")
    time.sleep(0.3)
    with open(out, "a") as f:
        f.write(f"{i}\n")

def main():
    out, count, method, graceful = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    sup = Supervisor(workers=2, start_method=method, handle_signals=True,
                     graceful_timeout=graceful, middleware=[Exits()])
    sup.start()
    futures = [sup.call(work, i, out) for i in range(count)]
    print("started", flush=True)
    code = sup.run()
    stats = sup.stats()
    failed = sum(1 for f in futures if f.exception() is not None)
    print(json.dumps({"code": code, "failed": failed, "state": sup.state, "exits": exits,
                      "restarts": dict(stats.restarts)}), flush=True)
    sys.exit(code)

if __name__ == "__main__":
    main()
"""


def group_signal(tmp_path: Path, start_method: str, signum: int) -> tuple[dict[str, object], float]:
    """Start the app in its own process group, signal the whole group once tasks run;
    returns the app's summary and how long the stop took."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    out = tmp_path / "out"
    count = 8
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(count), start_method, str(GRACEFUL)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as under `timeout` or tini -g
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        started = tmp_path / "out.started"
        deadline = time.monotonic() + 30
        while not (started.exists() and len(started.read_text().split()) >= 2):
            assert time.monotonic() < deadline, "no task started"
            time.sleep(0.02)
        # Both workers are mid-task now.
        signalled = time.monotonic()
        os.killpg(proc.pid, signum)
        stdout, _ = proc.communicate(timeout=GRACEFUL + 10)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert isinstance(summary, dict)
    ran = sorted(map(int, out.read_text().split()))
    assert ran == list(range(count)), "every task ran exactly once"
    # A task that started twice was cut and handed back.
    assert sorted(map(int, started.read_text().split())) == list(range(count))
    return summary, took


@pytest.mark.parametrize("start_method", ["forkserver", "fork"])
def test_group_sigterm_drains_without_crashes(tmp_path: Path, start_method: str) -> None:
    summary, took = group_signal(tmp_path, start_method, signal.SIGTERM)
    assert summary == {
        "code": 0,
        "failed": 0,
        "state": "stopped",
        "exits": ["stopped", "stopped"],  # no "crashed", no replacement started and stopped
        "restarts": {},
    }
    assert took < GRACEFUL


def test_group_sigint_drains_too(tmp_path: Path) -> None:
    summary, took = group_signal(tmp_path, "forkserver", signal.SIGINT)
    assert summary["code"] == 0 and summary["failed"] == 0
    assert summary["exits"] == ["stopped", "stopped"]
    assert took < GRACEFUL
