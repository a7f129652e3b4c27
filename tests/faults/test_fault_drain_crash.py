"""A worker that crashes while the supervisor drains is replaced, and that is counted.

Its tasks were handed back and a fresh worker was started to run them, as outside a
drain, but the replacement was counted nowhere (``chworkers_worker_restarts_total``, the
stats' ``restarts``), the crash did not count towards the restart backoff (a worker that
crashed at once was replaced at once, again and again, for the whole graceful timeout),
and the log line did not say whether the worker was replaced. A drain still needs the
crashed worker's tasks done before its deadline, so the worker is replaced while tasks
wait; once nothing is left to run, it is not (no fresh worker for a supervisor about to
stop), and the log line says which.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from waiting import wait_for

from chworkers import Supervisor
from chworkers.workers.middleware import Middleware

pytestmark = pytest.mark.timeout(90)


def crash_once(go: str, crashed: str) -> str:
    """Wait for ``go``; the first time, take the worker down (as the OOM killer would)."""
    while not os.path.exists(go):
        time.sleep(0.01)
    if not os.path.exists(crashed):
        Path(crashed).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return "done"


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class Exits(Middleware):
    worker_side = False

    def __init__(self) -> None:
        self.names: list[str] = []

    def after_worker_exit(self, name: str, pid: int | None, reason: str) -> None:
        self.names.append(name)


def _exits(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "exited with code" in r.getMessage()]


def test_a_worker_crashed_while_draining_is_replaced_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chworkers.workers")
    go, crashed = tmp_path / "go", tmp_path / "crashed"
    sup = Supervisor(workers=2, start_method="fork", prefetch=1, restart_backoff=0.01).start()
    try:
        victim = sup.call(crash_once, str(go), str(crashed))
        naps = [sup.call(nap, 0.2) for _ in range(8)]
        stopping = threading.Thread(target=sup.stop, kwargs={"graceful": True})
        stopping.start()
        wait_for(lambda: "draining:" in caplog.text, timeout=30, what="the drain")
        go.touch()
        stopping.join(60)
        assert not stopping.is_alive()
    finally:
        sup.stop(graceful=False)
    assert victim.result(0) == "done"  # run again after the crash, within the drain
    assert [f.result(0) for f in naps] == [0.2] * 8
    assert sup.stats().restarts.get("crashed") == 1
    crash = [line for line in _exits(caplog) if ": crashed;" in line]
    assert len(crash) == 1 and re.search(r"; replaced \(draining, \d+ tasks? waits?\)$", crash[0])


def test_no_fresh_worker_once_nothing_is_left_to_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker recycled by its task count while draining an empty queue is not replaced."""
    caplog.set_level(logging.INFO, logger="chworkers.workers")
    caplog.set_level(logging.DEBUG, logger="chworkers.workers.processes")  # "started ..."
    exits = Exits()
    sup = Supervisor(
        workers=2, start_method="fork", prefetch=1, max_tasks_per_worker=3, middleware=[exits]
    )
    sup.start()
    try:
        # Six tasks on two workers recycled after three: at least one recycles while
        # draining (how the first four spread is the dispatcher's choice).
        futures = [sup.call(nap, 0.05) for _ in range(4)]
        for f in futures:
            f.result(30)
        last = [sup.call(nap, 0.3) for _ in range(2)]
        sup.stop(graceful=True)
    finally:
        sup.stop(graceful=False)
    assert [f.result(0) for f in last] == [0.3, 0.3]
    messages = [r.getMessage() for r in caplog.records]
    drain = next(i for i, m in enumerate(messages) if m.startswith("draining:"))
    before, after = messages[:drain], messages[drain:]
    queued = int(re.match(r"draining: (\d+) queued", messages[drain]).group(1))  # type: ignore[union-attr]
    if queued:
        # The last task was still queued when the drain began: a recycled worker may be
        # replaced to run it (as the drain needs), which the first test covers.
        return
    # Nothing queued: no worker was started once the drain began. (One may start before
    # it: a worker is replaced as soon as it is sent the last task of its count, which
    # can be before ``stop`` is called.)
    assert not [m for m in after if m.startswith("started worker-")], after
    # Recycled while draining: not replaced, and no restart counted for it.
    recycled = [m for m in after if "exited with code" in m and ": recycled;" in m]
    assert recycled and all("; not replaced (" in m for m in recycled), recycled
    replaced_before = [m for m in before if ": recycled;" in m]
    assert sup.stats().restarts.get("recycled", 0) == len(replaced_before)
