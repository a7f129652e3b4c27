"""The supervisor's process machinery, with tasks that need no ClickHouse (``call``).

Real worker processes throughout; cross-process coordination goes through files.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import pytest
import waiting

from chworkers import Supervisor
from chworkers.errors import (
    ConfigError,
    QueueFullError,
    SerializationError,
    SupervisorStoppedError,
    TaskError,
    WorkerBootError,
    WorkerLostError,
)
from chworkers.workers.context import WorkerContext
from chworkers.workers.deadletter import DeadLetter
from chworkers.workers.middleware import Middleware

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def make_sup(make_sup: Callable[..., Supervisor]) -> Callable[..., Supervisor]:
    """conftest's, with two workers unless the test says otherwise."""

    def make(**kw: Any) -> Supervisor:
        kw.setdefault("workers", 2)
        return make_sup(**kw)

    return make


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def block_until(path: str, started: str | None = None) -> int:
    """A task that announces itself, then waits for ``path`` to exist."""
    if started is not None:  # whole or absent for the test's reader
        Path(started + ".partial").write_text(str(os.getpid()))
        os.replace(started + ".partial", started)
    while not os.path.exists(path):
        time.sleep(0.01)
    return os.getpid()


def crash_once(marker: str) -> int:
    """Kill our own worker the first time; succeed when re-run."""
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def hang_once(marker: str) -> int:
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        time.sleep(3600)
    return os.getpid()


def raise_value_error(msg: str) -> None:
    raise ValueError(msg)


# Booting and start methods.

BOOTED_IN: int | None = None


class RecordBoot(Middleware):
    def after_worker_boot(self, worker: WorkerContext) -> None:
        global BOOTED_IN
        BOOTED_IN = os.getpid()


def where_booted() -> tuple[int | None, int]:
    return BOOTED_IN, os.getpid()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_each_start_method_runs_closures_after_post_start_init(make_sup: Any, method: str) -> None:
    sup = make_sup(workers=1, start_method=method, middleware=[RecordBoot()])
    factor = 3
    assert sup.call(lambda x: x * factor, 14).result(20) == 42
    booted, pid = sup.call(where_booted).result(20)
    assert pid != os.getpid()
    assert booted == pid  # init ran in the worker, after it started


class FailBoot(Middleware):
    def after_worker_boot(self, worker: WorkerContext) -> None:
        raise RuntimeError("cannot reach the database at boot")


def test_workers_dying_at_boot_stop_the_supervisor_instead_of_crash_looping() -> None:
    sup = Supervisor(
        workers=2,
        start_method="fork",
        middleware=[FailBoot()],
        max_boot_failures=3,
        restart_backoff=0.05,
    )
    started = time.monotonic()
    with pytest.raises(WorkerBootError) as info:
        sup.start()
    assert time.monotonic() - started < 10
    assert "cannot reach the database at boot" in str(info.value)
    assert info.value.failures == 3
    assert sup.state == "failed"
    assert sup.run() == 4  # a daemon's exit status
    with pytest.raises(SupervisorStoppedError):
        sup.call(print)


def test_bad_settings_are_refused_with_key_value_expected() -> None:
    with pytest.raises(ConfigError) as info:
        Supervisor(workers=0)
    assert info.value.key == "workers" and info.value.value == 0
    with pytest.raises(ConfigError, match="unknown supervisor setting 'wrokers'"):
        Supervisor(wrokers=2)
    with pytest.raises(ConfigError, match="start_method"):
        Supervisor(start_method="thread")
    with pytest.raises(ConfigError, match="needs ClickHouse"):
        Supervisor().insert("t", [(1,)])
    with pytest.raises(SupervisorStoppedError, match="start"):
        Supervisor().call(print)


# Results, errors, dead letters.


def test_results_and_errors_resolve_their_futures_while_the_rest_go_on(make_sup: Any) -> None:
    letters: list[DeadLetter] = []
    sup = make_sup(dead_letter=letters.append)
    futures = [sup.call(pow, i, 2) for i in range(50)]
    bad = sup.call(raise_value_error, "no good")
    unpicklable = sup.call(lambda: (i for i in range(3)))
    more = [sup.call(pow, i, 3) for i in range(50)]
    assert [f.result(20) for f in futures] == [i * i for i in range(50)]
    assert [f.result(20) for f in more] == [i**3 for i in range(50)]
    with pytest.raises(TaskError) as info:
        bad.result(20)
    assert info.value.error_type == "builtins.ValueError"
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(SerializationError):
        unpicklable.result(20)
    assert sup.drain(10)
    kinds = sorted(type(letter.error).__name__ for letter in letters)
    assert kinds == ["SerializationError", "TaskError"]
    assert all(letter.reason == "error" for letter in letters)
    stats = sup.stats()
    assert stats.tasks["succeeded"] == 100 and stats.tasks["failed"] == 2


def test_queue_is_bounded_and_full_raises_after_timeout(make_sup: Any, tmp_path: Path) -> None:
    release = str(tmp_path / "release")
    sup = make_sup(workers=1, queue_size=3, prefetch=1, queue_timeout=0.2)
    held = [sup.call(block_until, release) for _ in range(2)]  # the worker holds 2 (prefetch min)
    time.sleep(0.3)
    queued = [sup.call(block_until, release) for _ in range(3)]
    started = time.monotonic()
    with pytest.raises(QueueFullError, match="queue full"):
        sup.call(block_until, release)
    assert 0.15 < time.monotonic() - started < 2
    assert sup.stats().queued == 3 and sup.stats().outstanding == 5
    Path(release).touch()
    assert len({f.result(20) for f in held + queued}) == 1


def test_cancelled_queued_tasks_do_not_run(make_sup: Any, tmp_path: Path) -> None:
    release, started = tmp_path / "release", tmp_path / "started"
    sup = make_sup(workers=1, prefetch=1)  # the worker holds 2 tasks at most
    first = [sup.call(block_until, str(release), str(started)) for _ in range(2)]
    wait_for(started)
    deadline = time.monotonic() + 20
    while sup.stats().in_flight < 2:  # both sent to the worker: nothing else fits
        assert time.monotonic() < deadline
        time.sleep(0.01)
    later = sup.call(Path(tmp_path / "ran").touch)
    time.sleep(0.1)
    assert sup.stats().queued == 1
    assert later.cancel()
    release.touch()
    for f in first:
        f.result(20)
    assert sup.drain(10)
    assert not (tmp_path / "ran").exists()


# Supervision.


def test_sigkill_mid_task_requeues_it_and_replaces_the_worker(
    make_sup: Any, tmp_path: Path
) -> None:
    release, started = tmp_path / "release", tmp_path / "started"
    sup = make_sup(workers=1)
    fut = sup.call(block_until, str(release), str(started))
    wait_for(started)
    first_pid = int(started.read_text())
    started.unlink()
    os.kill(first_pid, signal.SIGKILL)
    wait_for(started)  # re-run in the replacement worker
    release.touch()
    second_pid = fut.result(20)
    assert second_pid != first_pid
    stats = sup.stats()
    assert stats.restarts == {"crashed": 1}
    assert stats.tasks["requeued"] == 1 and stats.tasks["succeeded"] == 1


def test_task_crashing_its_worker_once_is_retried(make_sup: Any, tmp_path: Path) -> None:
    sup = make_sup(workers=2)
    marker = tmp_path / "crashed"
    fut = sup.call(crash_once, str(marker))
    assert fut.result(20) != int(marker.read_text())


def test_poison_task_fails_after_max_task_crashes_and_is_dead_lettered(make_sup: Any) -> None:
    letters: list[DeadLetter] = []
    sup = make_sup(workers=2, max_task_crashes=2, dead_letter=letters.append, restart_backoff=0.01)
    poison = sup.call(os.kill, 0, 0)  # harmless placeholder to warm up
    poison.result(20)
    poison = sup.call(lambda: os.kill(os.getpid(), signal.SIGKILL))
    fine = [sup.call(pow, 2, i) for i in range(20)]
    with pytest.raises(WorkerLostError) as info:
        poison.result(30)
    assert info.value.attempts == 2 and info.value.reason == "crashed"
    assert [f.result(20) for f in fine] == [2**i for i in range(20)]
    assert [letter.reason for letter in letters] == ["crashed"]


def test_hung_worker_is_killed_and_its_task_retried(make_sup: Any, tmp_path: Path) -> None:
    sup = make_sup(workers=1, hung_timeout=0.5, heartbeat_interval=0.1)
    marker = tmp_path / "hung"
    fut = sup.call(hang_once, str(marker))
    pid = fut.result(20)
    assert pid != int(marker.read_text())
    assert sup.stats().restarts == {"hung": 1}


def test_max_tasks_per_worker_recycles_workers_with_jitter(make_sup: Any) -> None:
    sup = make_sup(workers=2, max_tasks_per_worker=5, max_tasks_jitter=3)
    pids = [f.result(20) for f in [sup.call(os.getpid) for _ in range(60)]]
    per_pid = {pid: pids.count(pid) for pid in set(pids)}
    assert len(per_pid) >= 60 // 8
    assert max(per_pid.values()) <= 8
    # A recycled worker is counted once reaped, a moment after its last result.
    waiting.wait_for(
        lambda: sup.stats().restarts.get("recycled", 0) >= len(per_pid) - 2,
        timeout=20,
        what="the recycled workers reaped",
    )


def test_scale_up_and_down_at_runtime_without_losing_tasks(make_sup: Any) -> None:
    sup = make_sup(workers=1)
    futures = [sup.call(time.sleep, 0.01) for _ in range(30)]
    sup.scale(3)
    deadline = time.monotonic() + 20
    while len([w for w in sup.stats().workers if w["state"] != "starting"]) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    futures += [sup.call(time.sleep, 0.01) for _ in range(30)]
    sup.scale(1)
    futures += [sup.call(os.getpid) for _ in range(30)]
    done, _ = wait(futures, timeout=30)
    assert len(done) == 90 and all(f.exception() is None for f in done)
    deadline = time.monotonic() + 20
    while len(sup.stats().workers) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(ConfigError):
        sup.scale(0)


# Stopping.


def test_leaving_the_block_drains_the_queue(tmp_path: Path) -> None:
    with Supervisor(workers=2, start_method="fork") as sup:
        futures = [sup.call(time.sleep, 0.005) for _ in range(100)]
    assert all(f.done() and f.exception() is None for f in futures)
    assert sup.state == "stopped"
    with pytest.raises(SupervisorStoppedError):
        sup.call(print)


def test_graceful_timeout_then_terminate(make_sup: Any, tmp_path: Path) -> None:
    sup = make_sup(workers=1)
    stuck = sup.call(block_until, str(tmp_path / "never"))
    queued = [sup.call(block_until, str(tmp_path / "never")) for _ in range(5)]
    started = time.monotonic()
    sup.stop(graceful=True, timeout=0.5)
    assert time.monotonic() - started < 8
    for f in [stuck, *queued]:
        assert isinstance(f.exception(5), SupervisorStoppedError)


def long_task_that_beats(seconds: float) -> str:
    from chworkers.workers.worker import beat

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        beat()
    return "done"


def test_a_long_task_that_beats_is_not_taken_for_hung(make_sup: Any) -> None:
    sup = make_sup(workers=1, hung_timeout=0.3, heartbeat_interval=0.1)
    assert sup.call(long_task_that_beats, 1.5).result(20) == "done"
    assert sup.stats().restarts == {}


def test_callbacks_on_the_loop_thread_may_use_the_supervisor(make_sup: Any) -> None:
    sup = make_sup(workers=1)
    seen: list[Any] = []
    done = sup.call(os.getpid)
    done.add_done_callback(lambda f: seen.append(sup.stats().tasks["succeeded"]))
    done.result(20)
    sup.call(os.getpid).add_done_callback(lambda f: sup.stop())
    assert sup.wait(20)
    assert seen == [1] and sup.state == "stopped"


def test_switch_interval_is_set_while_running_and_restored(make_sup: Any) -> None:
    import sys

    before = sys.getswitchinterval()
    sup = make_sup(workers=1, switch_interval=0.002)
    assert sys.getswitchinterval() == pytest.approx(0.002)
    sup.stop()
    assert sys.getswitchinterval() == pytest.approx(before)


ORPHAN_APP = r"""
import os, sys, time
from pathlib import Path
from chworkers import Supervisor

def work(i, out):
    time.sleep(0.05)
    with open(out, "a") as f:
        f.write(f"{i}\n")

if __name__ == "__main__":
    sup = Supervisor(workers=1, start_method=sys.argv[2], prefetch=256).start()
    futures = [sup.call(work, i, sys.argv[1]) for i in range(400)]
    print(sup.stats().workers[0]["pid"], flush=True)
    time.sleep(3600)
"""


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_workers_stop_soon_after_their_supervisor_is_killed(tmp_path: Path, method: str) -> None:
    import subprocess
    import sys

    script, out = tmp_path / "app.py", tmp_path / "out"
    script.write_text(ORPHAN_APP)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), method], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        wait_for(out)
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while True:  # the worker exits within a task or two, not after all it holds
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "the orphaned worker kept running"
            time.sleep(0.05)
        assert len(out.read_text().split()) < 100
    finally:
        if proc.poll() is None:
            proc.kill()


def test_idle_forkserver_workers_stay_up(make_sup: Any) -> None:
    sup = make_sup(workers=1, start_method="forkserver", heartbeat_interval=0.05)
    pid = sup.call(os.getpid).result(20)
    time.sleep(0.5)  # many idle heartbeats; the worker's parent is the fork server
    assert sup.call(os.getpid).result(20) == pid
    assert sup.stats().restarts == {}


def worker_retry_attempts() -> int:
    from chworkers.workers import worker

    assert worker._CURRENT is not None
    return int(worker._CURRENT.settings["retry"].max_attempts)


def test_reconfigured_retry_policy_reaches_running_and_new_workers(make_sup: Any) -> None:
    sup = make_sup(workers=1)
    assert sup.call(worker_retry_attempts).result(20) == 5  # RetryPolicy's default
    sup.reconfigure(retry={"max_attempts": 2})
    assert sup.call(worker_retry_attempts).result(20) == 2
    sup.scale(2)
    results = {sup.call(worker_retry_attempts).result(20) for _ in range(20)}
    assert results == {2}
    with pytest.raises(ConfigError):
        sup.reconfigure(retry={"max_attempts": 0})
