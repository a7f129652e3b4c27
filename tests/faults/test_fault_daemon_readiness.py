"""``/readyz`` of the daemon says whether it accepts data, from start to stop.

The daemon's ``/readyz`` was the supervisor's: 200 once a worker was ready. That came
before the daemon had opened its spool and its sources (the push port refused
connections while ``/readyz`` said 200), and it stayed 200 after a stop had closed the
intake, while the daemon drained. It now answers 200 from READY=1 (the intake open)
until the stop begins, and the workers boot meanwhile instead of before: workers that
cannot start still end the daemon with exit code 4, and what it accepted by then stays
spooled for the next start.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from daemonthread import count, daemon_config, lines
from waiting import wait_for

from chworkers.daemon import config, intake
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(180)


def readyz(url: str) -> tuple[int, dict[str, Any]]:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/readyz")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_readyz_follows_the_intake_not_the_workers(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(lines(0, 100))
    cfg = daemon_config(
        tmp_path / "state",
        f"{endpoint.url}/{database}",
        {"source": "file", "paths": [str(source)], "follow": True},
    )
    cfg["supervisor"]["workers"] = 1
    daemon = Daemon(config.load(data=cfg, env={}))
    # The intake opens only when the test says so; a drain holds until it says so.
    open_intake, drained = threading.Event(), threading.Event()
    start = intake.Intake.start
    monkeypatch.setattr(intake.Intake, "start", lambda self: open_intake.wait(60) and start(self))
    drain = Daemon._drain
    monkeypatch.setattr(
        Daemon, "_drain", lambda self, t, **kw: drained.wait(60) and drain(self, t, **kw)
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            daemon.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: daemon.metrics_url is not None, timeout=60, what="the metrics endpoint")
        url = str(daemon.metrics_url)
        wait_for(
            lambda: readyz(url)[1].get("workers_ready") == 1,
            timeout=60,
            what="a worker ready",
        )
        # A worker is ready, the intake is not open: not ready.
        status, body = readyz(url)
        assert (status, body["reason"]) == (503, "starting"), body
        open_intake.set()
        assert daemon.wait_ready(60)
        status, body = readyz(url)
        assert status == 200 and body["workers_ready"] == 1, body
        daemon.request_stop()
        # The intake is closed, the drain runs: not ready any more.
        wait_for(lambda: readyz(url)[0] == 503, timeout=30, what="/readyz 503 while stopping")
        assert readyz(url)[1]["reason"] == "stopping: the intake is closed"
    finally:
        open_intake.set()
        drained.set()
        daemon.request_stop()
        thread.join(120)
    assert not errors, errors


def test_workers_that_cannot_start_end_the_daemon_with_4_and_nothing_is_lost(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(lines(0, 1000))
    (tmp_path / "c.toml").write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
url = "{endpoint.url}/{database}"
[metrics]
port = 0
[supervisor]
workers = 1
max_boot_failures = 1
[spool]
fsync = false
[[pipelines]]
name = "p"
source = "file"
paths = ["{source}"]
table = "ev"
create = "n UInt64, s String"
engine = "MergeTree ORDER BY n"
max_rows = 100
"""
    )
    command = [sys.executable, "-m", "chworkers", "run", "-c", str(tmp_path / "c.toml")]
    # Every process forked by Python code dies at once: the fork server's workers (the
    # daemon's own children are spawned, not forked by os.fork).
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import os\nos.register_at_fork(after_in_child=lambda: os._exit(3))\n"
    )
    failing = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(), "PYTHONPATH": str(tmp_path / "site")},
    )
    assert failing.returncode == 4, failing.stderr[-3000:]
    # The workers die at their fork; when the fork server's own start-up forks too, it is
    # the fork server that dies, and the first spawn fails outright. Both are a boot failure.
    assert (
        "died while starting" in failing.stderr or "cannot start a worker process" in failing.stderr
    ), failing.stderr[-3000:]
    spooled = list((tmp_path / "state" / "spool").glob("*.batch"))
    assert spooled, sorted(p.name for p in (tmp_path / "state").rglob("*"))
    # The next start inserts what the failed one accepted, once.
    ok = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_env())
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert count(endpoint, database) == (1000, 1000)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CHWORKERS_")}
