"""Rolling restarts (``Supervisor.restart_workers``, SIGUSR2) with real worker processes:
every worker replaced, each new one ready before the old one stops, no task lost."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import waiting

from chworkers import Supervisor
from chworkers.errors import SupervisorStoppedError

pytestmark = pytest.mark.timeout(90)


def record(n: int, log_path: str) -> int:
    """Record that task ``n`` ran in this process (once per run, in a shared file)."""
    time.sleep(0.01)
    with open(log_path, "a") as fh:
        fh.write(f"{n} {os.getpid()}\n")
    return os.getpid()


class Sampler:
    """Samples the workers' states from another thread while something runs."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.serving: list[int] = []  # ready workers not leaving (idle or busy)
        self.processes: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            workers = self.sup.stats().workers
            self.serving.append(sum(1 for w in workers if w["state"] in ("idle", "busy")))
            self.processes.append(len(workers))
            time.sleep(0.005)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)


def test_restart_workers_replaces_each_one_with_no_gap_and_no_lost_task(
    make_sup: Any, tmp_path: Path
) -> None:
    sup = make_sup(workers=3)
    old = {w["pid"] for w in sup.stats().workers}
    runs = tmp_path / "runs"
    futures: list[Future[int]] = []
    feeding = threading.Event()

    def feed() -> None:
        n = 0
        while not feeding.is_set() or n < 100:
            futures.append(sup.call(record, n, str(runs)))
            n += 1
            time.sleep(0.002)

    sampler = Sampler(sup)
    with ThreadPoolExecutor(1) as pool:
        fed = pool.submit(feed)
        time.sleep(0.1)
        replaced = sup.restart_workers(timeout=60)
        feeding.set()
        fed.result(30)
    pids = {f.result(30) for f in futures}
    sampler.stop()

    assert replaced == 3
    new = {w["pid"] for w in sup.stats().workers}
    assert len(new) == 3 and not new & old
    assert pids & old and pids & new  # tasks ran on both sides of the restart
    # Every task ran exactly once.
    ran = [int(line.split()[0]) for line in runs.read_text().splitlines()]
    assert sorted(ran) == list(range(len(futures)))
    # Capacity never dropped below the worker count; at most one fresh worker and one
    # draining old one beside them.
    assert min(sampler.serving) >= 3, sampler.serving
    assert max(sampler.processes) <= 5
    waiting.wait_for(lambda: sup.stats().restarts == {"rolling": 3}, timeout=10)
    assert (
        sup.registry.get_sample_value("chworkers_worker_restarts_total", {"reason": "rolling"}) == 3
    )


def test_sigusr2_restarts_the_workers(make_sup: Any) -> None:
    sup = make_sup(workers=2, handle_signals=True)
    old = {w["pid"] for w in sup.stats().workers}
    os.kill(os.getpid(), signal.SIGUSR2)
    waiting.wait_for(
        lambda: sup.stats().restarts.get("rolling", 0) == 2, timeout=30, what="two replaced"
    )
    new = {f.result(20) for f in [sup.call(os.getpid) for _ in range(20)]}
    assert not new & old
    assert len(sup.stats().workers) == 2


def test_a_second_request_joins_the_running_one(make_sup: Any) -> None:
    sup = make_sup(workers=2)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(sup.restart_workers, 60)
        second = pool.submit(sup.restart_workers, 60)
        assert first.result(60) == second.result(60) == 2
    assert sup.stats().restarts == {"rolling": 2}
    assert sup.restart_workers(timeout=60) == 2  # and a later one is a new rollout


def test_stopping_abandons_a_rolling_restart(make_sup: Any) -> None:
    sup = make_sup(workers=2)
    with ThreadPoolExecutor(1) as pool:
        rolling = pool.submit(sup.restart_workers, 60)
        waiting.wait_for(lambda: len(sup.stats().workers) == 3, timeout=20, what="a fresh one")
        sup.stop(graceful=False)
        with pytest.raises(SupervisorStoppedError):
            rolling.result(20)
