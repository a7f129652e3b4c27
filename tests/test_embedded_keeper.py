"""chworkers.embedded.keeper: the daemon's embedded ClickHouse child, kept running."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import waiting
from prometheus_client import CollectorRegistry

from chworkers.embedded import EmbeddedClickHouse
from chworkers.embedded.keeper import Keeper
from chworkers.ops.metrics import Metrics


@pytest.mark.timeout(120)
def test_a_killed_child_is_restarted_on_the_same_port_and_counted(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    keeper = Keeper(EmbeddedClickHouse(tmp_path / "data"), metrics=metrics)
    keeper.start()
    try:
        assert keeper.wait_up(60) and keeper.problems() == []
        assert metrics.embedded_up._value.get() == 1
        ch = keeper.endpoint
        port, first = ch.port, ch.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        waiting.wait_for(lambda: bool(keeper.problems()), timeout=10)
        (problem,) = keeper.problems()
        assert "(the child killed by SIGKILL)" in problem
        waiting.wait_for(lambda: keeper.restarts == 1 and keeper.wait_up(0), timeout=60)
        assert ch.port == port and ch.pid != first and ch.running
        assert ch.stats()["max_requests_in_flight"] >= 0  # it serves
        assert metrics.embedded_restarts._value.get() == 1
        assert metrics.embedded_up._value.get() == 1
    finally:
        keeper.stop()
    assert not keeper.endpoint.running and keeper.problems() == []


@pytest.mark.timeout(120)
def test_stop_cancels_a_start_in_progress_and_leaves_no_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that takes long to start must not hold the daemon's shutdown."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import time\ntime.sleep(30)\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    ch = EmbeddedClickHouse(tmp_path / "data")
    keeper = Keeper(ch)
    keeper.start()
    time.sleep(1.0)  # the child is starting (sleeping in its sitecustomize)
    started = time.monotonic()
    keeper.stop()
    assert time.monotonic() - started < 10
    assert not ch.running and not keeper.wait_up(0)
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _serves(pid, ch.path)]


def _serves(pid: str, path: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"embedded" in cmdline and str(path).encode() in cmdline
