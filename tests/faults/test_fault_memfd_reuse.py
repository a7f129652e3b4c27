"""A large batch is written into a memory file kept from a finished task, not a fresh one.

Before: every batch of 1 MiB or more got a new memory file, and writing into fresh pages
costs their allocation and zeroing, about three times the copy itself: for one 2M-row
``insert_raw`` (56 MB) ~85 ms of the producer's thread on the development machine, more
than half a raw POST of the same bytes. Kept files must never hand a worker another
task's batch, must stay bounded, and must not outlive their process.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from chworkers.errors import SerializationError
from chworkers.workers import sharedbuf
from chworkers.workers.context import TaskInfo, WorkerContext
from chworkers.workers.middleware import Middleware

pytestmark = pytest.mark.skipif(not sharedbuf.usable(), reason="no shared memory files here")


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> sharedbuf._Pool:
    fresh = sharedbuf._Pool()
    monkeypatch.setattr(sharedbuf, "_POOL", fresh)
    return fresh


def test_a_done_tasks_file_carries_the_next_batch(pool: sharedbuf._Pool) -> None:
    first = sharedbuf.SharedBuffer(b"a" * sharedbuf.THRESHOLD)
    old = first.ref
    first.close()
    assert len(pool) == 1
    second = sharedbuf.SharedBuffer(b"b" * 1000)  # smaller: fits the kept file
    try:
        assert second.ref.name == old.name and len(pool) == 0
        with pytest.raises(SerializationError, match="its task is done"):
            old.open()  # a stale reference never maps the next task's batch
        assert bytes(second.ref.open()) == b"b" * 1000
    finally:
        second.close()
    third = sharedbuf.SharedBuffer(b"c" * (2 * sharedbuf.THRESHOLD))  # larger: grows it
    try:
        assert third.ref.name == old.name
        assert bytes(third.ref.open()) == b"c" * (2 * sharedbuf.THRESHOLD)
    finally:
        third.close()


def test_kept_files_are_bounded_in_bytes_and_time(
    pool: sharedbuf._Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharedbuf, "POOL_BYTES", 3 * sharedbuf.THRESHOLD)
    buffers = [sharedbuf.SharedBuffer(b"x" * sharedbuf.THRESHOLD) for _ in range(4)]
    fds = [b.ref.fd for b in buffers]
    for b in buffers:
        b.close()
    assert len(pool) == 2  # a third would pass POOL_BYTES (each holds its tag too)
    closed = [fd for fd in fds if not os.path.exists(f"/proc/self/fd/{fd}")]
    assert len(closed) == 2
    monkeypatch.setattr(sharedbuf, "POOL_IDLE", 0.0)
    fresh = sharedbuf.SharedBuffer(b"y" * 10)  # idle ones are closed on the way
    fresh.close()
    assert len(pool) <= 1
    sharedbuf.sweep()  # as the supervisor's loop does now and then
    assert len(pool) == 0
    assert not [fd for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")]


def test_a_stopped_supervisor_leaves_no_kept_files(pool: sharedbuf._Pool) -> None:
    from chworkers import Supervisor

    with Supervisor(workers=1, start_method="fork") as sup:
        assert (
            sup.call(len, pickle.PickleBuffer(bytes(2 * sharedbuf.THRESHOLD))).result(60)
            == 2 * sharedbuf.THRESHOLD
        )
        assert len(pool) == 1  # kept for a later batch while it runs
    assert len(pool) == 0


class _DieOnceAfterInsert(Middleware):
    """Kills the worker right after its first insert landed, before it answers."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def after_task(
        self,
        worker: WorkerContext,
        task: TaskInfo,
        result: object,
        error: BaseException | None,
        duration: float,
    ) -> None:
        if task.kind == "insert" and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_workers_large_batch_runs_again_from_its_file(
    endpoint: Any, database: str, ch_client: Any, tmp_path: Path
) -> None:
    from chworkers import Supervisor

    ch_client.command(
        "CREATE TABLE t (id UInt64, s String) ENGINE = MergeTree ORDER BY id "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    rows = 60_000
    body = b"".join(b'{"id":%d,"s":"%s"}\n' % (i, b"x" * 30) for i in range(rows))
    assert len(body) > sharedbuf.THRESHOLD
    marker = tmp_path / "killed"
    with Supervisor(
        f"{endpoint.url}/{database}", workers=1, middleware=[_DieOnceAfterInsert(str(marker))]
    ) as sup:
        assert sup.insert_raw("t", body, "JSONEachRow", rows=rows).result(120) == rows
        # Its file is kept now: the next batch is written into it and read intact.
        second = body.replace(b'"s":"x', b'"s":"y')
        assert sup.insert_raw("t", second, "JSONEachRow", rows=rows).result(120) == rows
    assert marker.exists()
    assert ch_client.command("SELECT count(), uniqExact(id), countIf(s LIKE 'y%') FROM t") == [
        str(2 * rows),
        str(rows),
        str(rows),
    ]


def test_nothing_outlives_a_killed_supervisor(tmp_path: Path) -> None:
    """Memory files are anonymous: a supervisor killed with kill -9 holding large batches
    (queued and kept ones) leaves nothing behind, in /dev/shm or anywhere."""
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    script = tmp_path / "holder.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            from chworkers.workers import sharedbuf
            kept = sharedbuf.SharedBuffer(b"k" * (4 << 20))
            kept.close()  # done: kept for later
            held = sharedbuf.SharedBuffer(b"h" * (4 << 20))
            print(held.ref.fd, flush=True)
            time.sleep(60)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        fd = int(proc.stdout.readline())
        assert os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith("/memfd:chworkers-")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert not [n for n in after - before if "chworkers" in n or n.startswith(("psm_", "wnsm_"))]
