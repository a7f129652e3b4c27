"""The workers' fork server dying is survived: a new one starts, counted and logged.

Under ``start_method = "forkserver"`` (the default) every worker is forked by one fork
server, and the exit status of each comes back through a pipe that server holds. When the
server died (the OOM killer, a stray ``kill -9``), multiprocess reported every worker it
had forked as exited with code 255 (while it might still run, unseen, holding a task
handed back to another worker), and the supervisor took those for crashes, or, for
workers still booting, for boot failures: `max_boot_failures` of them in a row ended the
supervisor (the daemon exited with code 4). Now the supervisor tells the two apart: such
a worker is killed for sure and replaced at once (``chworkers_worker_restarts_total``
``reason="forkserver"``), and the next start begins a new fork server (a warning, and
``chworkers_fork_server_restarts_total``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from daemonthread import daemon_config
from drillprocs import descendants
from tomlfile import to_toml
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse

APP = r"""
import json, logging, os, sys, time
from multiprocess import forkserver as mp_forkserver
from chworkers import Supervisor
from chworkers.workers import forkserver
from chworkers.workers.middleware import Middleware

class SlowFirstBoot(Middleware):
    # Workers forked by the first server take their time to boot (and say they started).
    def __init__(self, first, marks):
        self.first, self.marks = first, marks
    def after_worker_boot(self, worker):
        if os.getppid() == self.first:
            open(os.path.join(self.marks, str(os.getpid())), "w").close()
            time.sleep(30)

exits = []

class Exits(Middleware):
    worker_side = False
    def after_worker_exit(self, name, pid, reason):
        exits.append(reason)

def main():
    logging.basicConfig(level=logging.WARNING)
    marks = sys.argv[1]
    forkserver.start_early("forkserver")
    first = mp_forkserver._forkserver._forkserver_pid
    sup = Supervisor(workers=2, max_boot_failures=2,
                     middleware=[SlowFirstBoot(first, marks), Exits()])
    sup.start(wait=False)
    while len(os.listdir(marks)) < 2:
        time.sleep(0.02)
    os.kill(first, 9)  # both workers are booting
    pid = sup.call(os.getpid).result(timeout=60)
    summary = {"state": sup.state, "exits": list(exits), "new_server": mp_forkserver._forkserver._forkserver_pid != first,
               "restarts": dict(sup.stats().restarts), "ran_in": pid}
    sup.stop()
    print(json.dumps(summary), flush=True)

if __name__ == "__main__":
    main()
"""


@pytest.mark.timeout(120)
def test_a_fork_server_dying_while_workers_boot_is_no_boot_failure(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(APP)
    marks = tmp_path / "marks"
    marks.mkdir()
    result = subprocess.run(
        [sys.executable, str(script), str(marks)], capture_output=True, text=True, timeout=100
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["state"] == "running"
    assert summary["exits"] == ["forkserver", "forkserver"]
    assert summary["new_server"] is True
    assert summary["restarts"].get("forkserver") == 2, summary
    assert "crashed" not in summary["restarts"] or summary["restarts"]["crashed"] == 0
    assert "started a new one" in result.stderr, result.stderr[-3000:]
    for pid in map(int, os.listdir(marks)):  # the slow booters were killed, not left to run
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), pid


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rfind(")") + 2 :].split()[0]


def _metric(url: str, line_start: str) -> float | None:
    with urllib.request.urlopen(url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
    return None


@pytest.mark.timeout(180)
def test_daemon_kill9_of_the_fork_server_then_a_worker_crash_exact_rows(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    """`chworkers run` fed by a generator: kill -9 of its fork server, then of a worker
    the new server forked: both replaced, the run ends with code 0, every row once."""
    n = 8000
    conf = tmp_path / "chworkers.toml"
    pipeline = {
        "source": "generator",
        "generator_count": n,
        "generator_rate": 1000,
        "create": "ts DateTime, user_id UInt64, event String, value Float64, url String",
        "engine": "MergeTree ORDER BY ts",
        "max_rows": 200,
    }
    conf.write_text(
        to_toml(daemon_config(tmp_path / "state", f"{endpoint.url}/{database}", pipeline))
    )
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chworkers", "run", "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def text() -> str:
        return log_path.read_text(errors="replace")

    def servers() -> list[int]:
        return [
            p.pid
            for p in descendants(proc.pid)
            if p.ppid == proc.pid and "multiprocess.forkserver" in p.cmdline
        ]

    try:
        wait_for(
            lambda: "chworkers running" in text() or proc.poll() is not None,
            timeout=120,
            what="the daemon to run",
        )
        assert proc.poll() is None, text()[-3000:]
        first = servers()
        assert len(first) == 1, first
        os.kill(first[0], signal.SIGKILL)
        wait_for(
            lambda: "started a new one" in text() or proc.poll() is not None,
            timeout=60,
            what="a new fork server",
        )
        assert proc.poll() is None, text()[-3000:]
        (second,) = servers()
        assert second != first[0]
        wait_for(
            lambda: len([p for p in descendants(second) if p.ppid == second]) == 2,
            timeout=60,
            what="two workers from the new server",
        )
        url = text().split("metrics ")[-1].split()[0].rstrip(",")
        assert _metric(url, "chworkers_fork_server_restarts_total") == 1.0
        assert _metric(url, 'chworkers_worker_restarts_total{reason="forkserver"}') == 2.0
        worker = next(p.pid for p in descendants(second) if p.ppid == second)
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: proc.poll() is not None, timeout=120, what="the run to end")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = text()
    assert proc.returncode == 0, out[-3000:]
    assert f"(pid {worker}) exited with code -9: crashed" in out, out[-3000:]
    assert out.count("exited with code 255: forkserver") == 2, out[-3000:]
    assert ch_client.command("SELECT count() FROM ev") == n
