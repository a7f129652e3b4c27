"""File positions: saved durably, and a new file that reuses a finished file's inode is
read (issue 9, items 13 and 15)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonthread import Running, count, daemon_config
from smalldisk import disk_full, fill, small_filesystem
from waiting import wait_for

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.filesource import FileSource
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch
from chworkers.embedded import EmbeddedClickHouse
from chworkers.ops.health import Level


class Pipeline:
    """A real spool, batcher and checkpoint store; batches are collected, not inserted."""

    def __init__(self, root: Path) -> None:
        self.spool = Spool(root / "spool", SpoolSettings(fsync=False))
        self.checkpoints = Checkpoints(root / "positions")
        self.batches: list[SpooledBatch] = []
        limits = BatchLimits(max_rows=1000, max_delay=0.02)
        self.batcher = Batcher(self.spool, self.on_batch, limits=limits)

    def on_batch(self, batch: SpooledBatch) -> None:
        self.checkpoints.commit_batch(batch)
        self.batches.append(batch)

    def records(self) -> bytes:
        self.batcher.flush()
        return b"".join(b.payload for b in sorted(self.batches, key=lambda b: b.seq))

    def source(self, pattern: Path, *, follow: bool) -> FileSource:
        return FileSource(
            [str(pattern)],
            checkpoints=self.checkpoints,
            name="logs",
            table="events",
            format="JSONEachRow",
            batcher=self.batcher,
            poll_interval=0.02,
            follow=follow,
        )


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path)
    yield p
    p.batcher.close(timeout=10)


def lines(start: int, stop: int) -> bytes:
    return b"".join(b'{"n":%d}\n' % i for i in range(start, stop))


def with_inode(path: Path, inode: int, data: bytes) -> None:
    """Create ``path`` holding ``data`` on the (freed) inode number ``inode``: files are
    made next to it (named so no pattern matches) until the filesystem hands that number
    out again, then renamed into place (a rename keeps the inode)."""
    for attempt in range(200):
        candidate = path.parent / f".staging-{attempt}"
        candidate.write_bytes(data)
        if candidate.stat().st_ino == inode:
            os.rename(candidate, path)
            return
    pytest.skip("this filesystem did not reuse the inode number (ext4 does at once)")


def test_a_new_file_on_a_finished_files_inode_is_read(pipeline: Pipeline, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    first = logs / "app.log"
    first.write_bytes(lines(0, 100))
    inode = first.stat().st_ino
    source = pipeline.source(logs / "*.log", follow=True)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: pipeline.records() == lines(0, 100), timeout=30)
        first.unlink()  # the file is gone: the source finishes it
        wait_for(lambda: not source._open, timeout=30)
        with_inode(logs / "next.log", inode, lines(100, 250))
        wait_for(lambda: pipeline.records() == lines(0, 250), timeout=30)
    finally:
        stop.set()
        thread.join(30)


def test_a_saved_position_does_not_skip_into_a_new_file_on_the_same_inode(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """After a restart, the saved position of a deleted file must not be applied to a
    new file at the same path that got the same inode number."""
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "app.log"
    path.write_bytes(lines(0, 100))
    inode = path.stat().st_ino
    pipeline.source(path, follow=False).run(threading.Event())
    assert pipeline.records() == lines(0, 100)
    path.unlink()
    with_inode(path, inode, lines(1000, 1300))

    restarted = Pipeline(tmp_path)  # same checkpoint directory, a new spool's batches
    try:
        restarted.source(path, follow=False).run(threading.Event())
        assert restarted.records() == lines(1000, 1300)
    finally:
        restarted.batcher.close(timeout=10)


def test_a_position_is_saved_with_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename that publishes a checkpoint is durable only once the directory is
    fsync'd; without it a crash can bring back an older position (rows read twice)."""
    checkpoints = Checkpoints(tmp_path / "positions")
    directory = os.stat(tmp_path / "positions")
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    checkpoints.commit("p", {"/var/log/a": {"dev": 1, "ino": 2, "offset": 3}})
    assert (directory.st_dev, directory.st_ino) in synced
    assert checkpoints.load("p") == {"/var/log/a": {"dev": 1, "ino": 2, "offset": 3}}
    assert sorted(p.name for p in (tmp_path / "positions").iterdir()) == ["p.journal", "p.json"]


def test_a_position_that_could_not_be_saved_is_saved_later(tmp_path: Path) -> None:
    """A save that failed (disk full) left the position ahead in memory only; the next
    save of the same position found nothing changed and skipped the file, so a restart
    went back to the old position and read those rows again."""
    with small_filesystem(tmp_path / "small") as tmpfs:
        checkpoints = Checkpoints(tmp_path / "small" / "positions")
        first = {"/var/log/a": {"dev": 1, "ino": 2, "offset": 10}}
        later = {"/var/log/a": {"dev": 1, "ino": 2, "offset": 20}}
        # More than the journal's first block has room for (its first line is there).
        later |= {f"/var/log/b{i:03d}": {"dev": 1, "ino": 3 + i, "offset": 5} for i in range(99)}
        checkpoints.commit("p", first)
        with disk_full(tmp_path / "small", tmpfs=tmpfs), pytest.raises(OSError):
            checkpoints.commit("p", later)
        assert checkpoints.problems() and "not saved" in checkpoints.problems()[0]
        assert sorted(p.name for p in (tmp_path / "small" / "positions").iterdir()) == [
            "p.journal",
            "p.json",
        ]
        checkpoints.save_unsaved()  # what the daemon's loop does every second
        assert checkpoints.problems() == []
        assert Checkpoints(tmp_path / "small" / "positions").load("p") == later


@pytest.mark.timeout(180)
def test_health_says_when_positions_cannot_be_saved(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    """The positions' disk is full: the batches are spooled and inserted, health says
    the positions are not saved (degraded), and once there is room they are saved."""
    state = tmp_path / "state"
    logs = tmp_path / "logs"
    logs.mkdir()
    with small_filesystem(state / "positions") as tmpfs:
        if not tmpfs:
            pytest.skip("mounting a tmpfs is not permitted here (the unit test above covers it)")
        pipeline = {"source": "file", "paths": [str(logs / "*.json")], "follow": True}
        running = Running(
            daemon_config(state, f"{endpoint.url}/{database}", {**pipeline, "poll_interval": 0.05})
        )
        try:
            filler = fill(state / "positions")
            (logs / "a.json").write_bytes(lines(0, 1000))
            wait_for(lambda: count(endpoint, database)[0] == 1000, timeout=60, interval=0.2)

            def positions_problem() -> list[str]:
                report = running.daemon.health()
                return [p.reason for p in report.problems if p.component == "positions"]

            wait_for(lambda: bool(positions_problem()), timeout=30, interval=0.1)
            assert "not saved" in positions_problem()[0]
            assert running.daemon.health().level == Level.DEGRADED
            filler.unlink()  # room again: saved within a second or so
            wait_for(lambda: not positions_problem(), timeout=30, interval=0.1)
            saved = Checkpoints(state / "positions").load("p")  # snapshot + journal
            assert saved[str(logs / "a.json")]["offset"] == (logs / "a.json").stat().st_size
            assert running.stop() == 0
        finally:
            if running.thread.is_alive():
                running.stop()
