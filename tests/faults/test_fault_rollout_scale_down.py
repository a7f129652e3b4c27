"""A rolling restart and a scale-down at once boot no worker more than the new count.

The rollout starts a fresh worker beside the old one it replaces; a scale-down meanwhile
could retire that very old worker. Once ready, the fresh one found its old one gone and
was "one too many": the count was brought back to the target by retiring the least busy
worker, often the fresh one itself (idle, just booted), and the rollout then booted yet
another worker for each old one still serving. Now a scale-down retires the workers the
rollout has still to replace first, and a fresh worker whose old one left replaces the
next old one instead.

Counted here: worker boots (a file each), with the old workers busy so that the
least-busy rule would pick the fresh one.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import waiting

from chworkers.workers.context import WorkerContext
from chworkers.workers.middleware import Middleware

pytestmark = pytest.mark.timeout(90)


class Boots(Middleware):
    """Each worker marks its boot; while ``hold`` exists, new workers wait to be ready."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def after_worker_boot(self, worker: WorkerContext) -> None:
        Path(self.directory, "boots", str(os.getpid())).write_text("")
        while os.path.exists(os.path.join(self.directory, "hold")):
            time.sleep(0.01)


def busy(directory: str) -> int:
    """Say which worker runs it, then wait until this worker is told to go on."""
    Path(directory, "busy", str(os.getpid())).write_text("")
    while not os.path.exists(os.path.join(directory, "go", str(os.getpid()))):
        time.sleep(0.01)
    return os.getpid()


def test_a_scale_down_during_a_rolling_restart_boots_no_extra_worker(
    make_sup: Any, tmp_path: Path
) -> None:
    for sub in ("boots", "busy", "go"):
        (tmp_path / sub).mkdir()
    sup = make_sup(workers=3, middleware=[Boots(str(tmp_path))])
    waiting.wait_for(lambda: len(list((tmp_path / "boots").iterdir())) == 3, timeout=30)
    old = sorted(w["pid"] for w in sup.stats().workers)
    tasks = [sup.call(busy, str(tmp_path)) for _ in range(3)]
    waiting.wait_for(lambda: len(list((tmp_path / "busy").iterdir())) == 3, timeout=30)
    # One old worker idle, two busy: the idle one is the first the rollout replaces and
    # the one a scale-down by the least busy retires; then the fresh one is the idle one.
    first = min(old)
    (tmp_path / "go" / str(first)).write_text("")
    waiting.wait_for(lambda: sum(t.done() for t in tasks) == 1, timeout=30)
    assert next(t for t in tasks if t.done()).result() == first

    (tmp_path / "hold").write_text("")
    restarted = threading.Thread(target=sup.restart_workers, kwargs={"timeout": 60})
    restarted.start()
    waiting.wait_for(lambda: len(list((tmp_path / "boots").iterdir())) == 4, timeout=30)
    sup.scale(2)
    waiting.wait_for(  # applied on the loop: one old worker leaves
        lambda: any(w["state"] == "stopping" for w in sup.stats().workers), timeout=30
    )
    (tmp_path / "hold").unlink()
    # The fresh worker ready, the busy old ones still busy: one of the three is retired.
    waiting.wait_for(
        lambda: (
            sum(w["state"] == "stopping" and w["pid"] != first for w in sup.stats().workers) == 1
        ),
        timeout=30,
    )
    for pid in old:
        (tmp_path / "go" / str(pid)).write_text("")
    restarted.join(60)
    assert not restarted.is_alive()
    for t in tasks:
        t.result(30)
    waiting.wait_for(lambda: len(sup.stats().workers) == 2, timeout=30)
    now = sorted(w["pid"] for w in sup.stats().workers)
    assert not set(now) & set(old), (old, now)  # every worker replaced
    boots = len(list((tmp_path / "boots").iterdir()))
    assert boots == 3 + 2, f"{boots - 3} workers booted for 2 (old {old}, now {now})"
