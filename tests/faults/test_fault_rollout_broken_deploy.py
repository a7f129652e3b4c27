"""A rolling restart after a deploy that broke what workers import took the whole pool
down: its fresh workers died at boot, counted towards max_boot_failures as at start, and
the supervisor gave up (the daemon exits 4). Now the rollout is abandoned with a
WorkerBootError and the old workers go on serving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from chworkers.errors import WorkerBootError
from chworkers.workers.context import WorkerContext
from chworkers.workers.middleware import Middleware

pytestmark = pytest.mark.timeout(90)


class BrokenDeploy(Middleware):
    """Workers that boot once ``flag`` exists fail, as after a deploy that broke an import."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def after_worker_boot(self, worker: WorkerContext) -> None:
        if os.path.exists(self.flag):
            raise ImportError("No module named 'tasks_v2' (the deploy is broken)")


def test_a_deploy_whose_workers_cannot_boot_leaves_the_old_ones_serving(
    make_sup: Any, tmp_path: Path
) -> None:
    flag = tmp_path / "broken"
    sup = make_sup(
        workers=2, max_boot_failures=3, restart_backoff=0.01, middleware=[BrokenDeploy(str(flag))]
    )
    old = {w["pid"] for w in sup.stats().workers}
    flag.touch()
    with pytest.raises(WorkerBootError, match="tasks_v2") as caught:
        sup.restart_workers(timeout=60)
    assert caught.value.failures == 3
    assert sup.state == "running" and sup.error is None
    assert {f.result(20) for f in [sup.call(os.getpid) for _ in range(20)]} <= old
    assert {w["pid"] for w in sup.stats().workers} == old
    flag.unlink()  # fixed: the next rolling restart goes through
    assert sup.restart_workers(timeout=60) == 2
    assert not {w["pid"] for w in sup.stats().workers} & old
