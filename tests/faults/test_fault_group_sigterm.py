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
from clickhouse_connect.driver.client import Client
from clirun import run_chworkers, run_until_signalled
from daemonthread import lines
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse
from chworkers.pids import alive

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


@pytest.mark.timeout(180)
def test_daemon_group_sigterm_mid_ingest_exact_count(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    """`chworkers run` in its own process group (as under `timeout` or `tini -g`), a
    SIGTERM to the group while inserts run: a clean drain, no worker crash, and the
    rest of the file in on the next run, each row once. (The drain inserts what was
    spooled already, which may be the whole file: the rerun may have nothing to do.)"""
    n = 200_000
    (tmp_path / "in.json").write_bytes(lines(0, n))
    conf = tmp_path / "chworkers.toml"
    conf.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
url = "{endpoint.url}/{database}"
[supervisor]
workers = 2
graceful_timeout = "{GRACEFUL}s"
[metrics]
port = 0
[[pipelines]]
name = "p"
source = "file"
paths = ["{tmp_path / "in.json"}"]
follow = false
table = "ev"
create = "n UInt64, s String"
engine = "MergeTree ORDER BY n"
max_rows = 2000
"""
    )

    def inserted(proc: object) -> bool:
        try:
            return int(ch_client.command("SELECT count() FROM ev")) > 0  # type: ignore[arg-type]
        except Exception:
            return False

    result, took = run_until_signalled(
        "run", "-c", str(conf), ready=inserted, group=True, timeout=GRACEFUL + 10
    )
    stderr = result.stderr
    assert result.returncode == 0, stderr[-3000:]
    assert "crashed" not in stderr, stderr[-3000:]
    assert "SIGTERM left to the supervisor" in stderr  # each worker says why it stayed
    assert took < GRACEFUL
    again = run_chworkers("run", "-c", str(conf), timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert ch_client.query("SELECT count(), uniqExact(n), sum(n) FROM ev").result_rows[0] == (
        n,
        n,
        sum(range(n)),
    )


ORPHAN_APP = r"""
import os, sys, time
from chworkers import Supervisor

def stuck(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(1)

def main():
    sup = Supervisor(workers=1, start_method="forkserver").start()
    sup.call(stuck, sys.argv[1])
    time.sleep(600)

if __name__ == "__main__":
    main()
"""


def test_sigterm_still_ends_a_worker_whose_supervisor_is_gone(tmp_path: Path) -> None:
    """Workers ignore SIGTERM only while their supervisor lives: an orphan stuck in a task
    (it notices the supervisor's death only between tasks) goes on SIGTERM."""
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN_APP)
    pid_file = tmp_path / "worker.pid"
    proc = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    worker = 0
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", timeout=30)
        worker = int(pid_file.read_text())
        os.kill(worker, signal.SIGTERM)  # supervisor alive: ignored
        time.sleep(0.3)
        assert alive(worker)
        proc.kill()
        proc.wait()
        os.kill(worker, signal.SIGTERM)
        wait_for(lambda: not alive(worker), timeout=10, what="the orphan to go on SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if worker and alive(worker):
            os.kill(worker, signal.SIGKILL)
