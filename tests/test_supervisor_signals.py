"""A supervisor that owns its process: SIGTERM/SIGINT drain, a second signal stops fast,
SIGHUP reloads settings. Each test runs a real supervisor in a child Python process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(60)

APP = r"""
import json, os, sys, time
from pathlib import Path
from chworkers import Supervisor

config, out, count, pause = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

def work(i, out, pause):
    if pause < 0:
        while True:
            time.sleep(1)
    time.sleep(pause)
    with open(out, "a") as f:
        f.write(f"{i}\n")

sup = Supervisor(workers=2, start_method="fork", handle_signals=True, metrics_port=0,
                 graceful_timeout=20, on_reload=lambda: json.loads(config.read_text()))
sup.start()
futures = [sup.call(work, i, out, pause) for i in range(count)]
print(sup.metrics_url, flush=True)
code = sup.run()
failed = sum(1 for f in futures if f.exception() is not None)
print(json.dumps({"code": code, "failed": failed, "state": sup.state}), flush=True)
sys.exit(code)
"""


@pytest.fixture
def app(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []
    script = tmp_path / "app.py"
    script.write_text(APP)

    def start(
        count: int, pause: float, config: dict[str, object] | None = None
    ) -> tuple[subprocess.Popen[str], str]:
        (tmp_path / "config.json").write_text(json.dumps(config or {}))
        proc = subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(tmp_path / "config.json"),
                str(tmp_path / "out"),
                str(count),
                str(pause),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        return proc, url

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, _ = proc.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "out"
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_queued_tasks_then_exits(app: object, tmp_path: Path, signum: int) -> None:
    proc, _ = app(count=80, pause=0.02)  # type: ignore[operator]
    proc.send_signal(signum)
    result = finish(proc)
    assert result == {"code": 0, "failed": 0, "state": "stopped"}
    assert sorted(map(int, lines(tmp_path))) == list(range(80))


def test_second_signal_stops_fast(app: object, tmp_path: Path) -> None:
    proc, url = app(count=10, pause=-1)  # type: ignore[operator]
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while readyz(url) == 200:  # draining: no longer ready
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    result = finish(proc)
    assert time.monotonic() - started < 10  # not the 20 s graceful timeout
    assert result == {"code": 0, "failed": 10, "state": "stopped"}


def readyz(url: str) -> int:
    try:
        with urllib.request.urlopen(url.replace("/metrics", "/readyz"), timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def worker_count(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "chworkers_workers":
            return sum(s.value for s in family.samples if s.labels["state"] != "stopping")
    raise AssertionError("chworkers_workers missing")


def test_sighup_reloads_the_worker_count_without_losing_tasks(app: object, tmp_path: Path) -> None:
    proc, url = app(count=200, pause=0.02)  # type: ignore[operator]
    for workers in (4, 1):
        (tmp_path / "config.json").write_text(json.dumps({"workers": workers}))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while worker_count(url) != workers:
            assert time.monotonic() < deadline, f"never reached {workers} workers"
            time.sleep(0.05)
    (tmp_path / "config.json").write_text(json.dumps({"start_method": "spawn"}))
    proc.send_signal(signal.SIGHUP)  # not reloadable: logged, the supervisor carries on
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == {"code": 0, "failed": 0, "state": "stopped"}
    assert sorted(map(int, lines(tmp_path))) == list(range(200))
