"""The spool when its disk is full: nothing half-written stays, nothing is lost, no batch
number is handed out twice (issue 9, item 2)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonthread import Running, count, daemon_config, lines
from faultproxy import FaultProxy
from prometheus_client import CollectorRegistry
from smalldisk import disk_full, small_filesystem
from waiting import wait_for

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import SpoolError, SpoolFullError, SpoolWriteError
from chworkers.ops.metrics import Metrics


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, bool]]:
    """A directory on an 8 MiB tmpfs when mounting is permitted (True), else a plain one."""
    path = tmp_path / "small"
    with small_filesystem(path) as tmpfs:
        yield path, tmpfs


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-"))


def test_a_failed_write_leaves_no_temporary_file_and_says_why(
    small_disk: tuple[Path, bool],
) -> None:
    path, tmpfs = small_disk
    metrics = Metrics(CollectorRegistry())
    spool = Spool(path / "spool", SpoolSettings(fsync=True), metrics=metrics)
    spool.put("t", b"first\n", format="CSV", rows=1)  # numbers reserved: the next put only
    with disk_full(path, tmpfs=tmpfs):  # writes its batch file
        with pytest.raises(SpoolWriteError) as failed:
            spool.put("t", b"x" * 100_000 + b"\n", format="CSV", rows=1)
        assert leftovers(path / "spool") == []
        assert "cannot write" in str(failed.value) and failed.value.errno is not None
        problems = spool.problems()
        assert len(problems) == 1 and "spool writes failing" in problems[0], problems
    assert metrics.spool_write_failures.labels(reason="io")._value.get() == 1
    assert [b.payload for b in Spool(path / "spool").recover()] == [b"first\n"]
    spool.put("t", b"again\n", format="CSV", rows=1)  # room again: it works, and says so
    assert spool.problems() == []
    assert leftovers(path / "spool") == []


def test_a_failed_sequence_write_hands_out_no_number(small_disk: tuple[Path, bool]) -> None:
    """The batch number is the deduplication token: one handed out without being made
    durable comes back after a restart, and ClickHouse drops the new batch as a duplicate."""
    path, tmpfs = small_disk
    spool = Spool(path / "spool", SpoolSettings(fsync=True))
    with disk_full(path, tmpfs=tmpfs), pytest.raises((SpoolWriteError, OSError)):
        spool.put("t", b"1\n", format="CSV", rows=1)  # the first put persists the numbers
    used = spool.put("t", b"2\n", format="CSV", rows=1)
    spool.remove(used)  # confirmed by ClickHouse, gone from the spool
    again = Spool(path / "spool", SpoolSettings(fsync=True))
    again.recover()
    later = [again.put("t", b"%d\n" % i, format="CSV", rows=1) for i in range(3)]
    assert used.token not in {b.token for b in later}
    assert all(b.seq > used.seq for b in later)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("limit", ["small-filesystem", "size-cap"])
def test_file_source_waits_for_a_full_spool_and_loses_nothing(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    fault_proxy: FaultProxy,
    limit: str,
) -> None:
    """ClickHouse is down and the spool fills up (ENOSPC on a small filesystem, or its
    size cap under policy reject): the file source waits with its position before the
    rows the spool refused, and once ClickHouse is back every row lands exactly once."""
    n = 500_000  # about 14 MiB of JSON: more than the 8 MiB filesystem or the 2 MiB cap
    state = tmp_path / "state"
    data = tmp_path / "in"
    data.mkdir()
    with small_filesystem(state / "spool") as tmpfs:
        if limit == "small-filesystem" and not tmpfs:
            pytest.skip("mounting a tmpfs is not permitted here; the size-cap case covers it")
        spool = {"max_bytes": 2 * 1024 * 1024, "policy": "reject"} if limit == "size-cap" else {}
        pipeline = {
            "source": "file",
            "paths": [str(data / "*.json")],
            "follow": True,
            "poll_interval": "50ms",
        }
        running = Running(daemon_config(state, f"{fault_proxy.url}/{database}", pipeline, **spool))
        try:
            fault_proxy.set("refuse")  # ClickHouse is down from here on
            (data / "app.json").write_bytes(lines(0, n))
            size = (data / "app.json").stat().st_size
            metrics = running.daemon.metrics
            reason = "io" if limit == "small-filesystem" else "full"
            wait_for(
                lambda: metrics.spool_write_failures.labels(reason=reason)._value.get() >= 3,
                timeout=120,
            )
            # The source waits instead of reading on past what the spool refused, and its
            # saved position stays before those rows.
            assert metrics.source_rows.labels(source="p")._value.get() < n
            positions = Checkpoints(state / "positions").load("p")
            assert positions[str(data / "app.json")]["offset"] < size
            problems = running.daemon.batcher.problems()
            assert problems and "pipeline p" in problems[0], problems
            assert running.daemon.spool.problems()
            assert metrics.spool_waiting_rows._value.get() > 0
            report = running.daemon.health()  # what /healthz and STATUS= say
            assert {"spool", "batcher"} <= {p.component for p in report.problems}, report
            assert report.alive  # degraded: a restart would not help

            fault_proxy.set("pass")  # ClickHouse is back: the spool drains, the source goes on
            wait_for(lambda: count(endpoint, database)[0] >= n, timeout=180, interval=0.5)
            assert running.stop() == 0
        finally:
            if running.thread.is_alive():
                running.stop()
        assert count(endpoint, database) == (n, n)
        positions = Checkpoints(state / "positions").load("p")
        assert positions[str(data / "app.json")]["offset"] == size
        assert running.daemon.batcher.problems() == []
        assert not [p.name for p in (state / "spool").iterdir() if p.name.endswith(".batch")]
        assert leftovers(state / "spool") == []


def test_a_source_blocked_on_a_full_spool_is_visible(tmp_path: Path) -> None:
    """Under policy block (the default) a full spool makes the source wait inside the
    spool: that wait shows in the batcher's problems() and chworkers_spool_waiting_rows
    as a refused write does, and clears once the spool has room."""
    metrics = Metrics(CollectorRegistry())
    spool = Spool(tmp_path / "spool", SpoolSettings(max_bytes=4096, policy="block", fsync=False))
    filler = spool.put("t", b"x" * 8000 + b"\n", format="CSV", rows=1)  # fills the spool
    batcher = Batcher(
        spool, lambda b: None, limits=BatchLimits(max_rows=10, max_delay=60), metrics=metrics
    )
    source = threading.Thread(
        target=lambda: batcher.add("t", b"1\n" * 10, 10, format="CSV", pipeline="p", retry=True)
    )
    source.start()  # cuts the batch in its own thread, and waits for room
    try:
        wait_for(lambda: bool(batcher.problems()), timeout=10)
        assert "pipeline p: a batch of 10 rows has waited" in batcher.problems()[0]
        assert "the spool is full" in batcher.problems()[0]
        assert metrics.spool_waiting_rows._value.get() == 10
        assert spool.problems() and "writers waiting" in spool.problems()[0]
        spool.remove(filler)
        source.join(10)
        assert not source.is_alive()
        assert batcher.problems() == [] and spool.problems() == []
        assert metrics.spool_waiting_rows._value.get() == 0
    finally:
        batcher.close(timeout=5)
        source.join(10)


def test_a_refusal_is_not_reported_once_there_is_room_again(tmp_path: Path) -> None:
    """Under policy reject a refused batch made problems() (and so health) report a full
    spool until the next successful write, however long the spool had been empty."""
    spool = Spool(tmp_path / "spool", SpoolSettings(max_bytes=4096, policy="reject", fsync=False))
    filler = spool.put("t", b"x" * 8000 + b"\n", format="CSV", rows=1)
    with pytest.raises(SpoolFullError):
        spool.put("t", b"y\n", format="CSV", rows=1)
    assert spool.problems() and "is full" in spool.problems()[0]
    spool.remove(filler)  # ClickHouse took the batch: there is room
    assert spool.problems() == []


def test_a_batch_that_cannot_be_encoded_fails_alone(tmp_path: Path) -> None:
    """An error other than the spool's (here: meta that JSON cannot encode) fails the
    records it concerns; the timer thread lives on and cuts the other batches."""
    batcher = Batcher(Spool(tmp_path / "spool", SpoolSettings(fsync=False)), lambda b: None)
    try:
        broken = batcher.add("t", b"1\n", 1, format="CSV", meta={"x": object()})
        with pytest.raises(SpoolError, match="TypeError"):
            broken.wait(10)
        fine = batcher.add("u", b"2\n", 1, format="CSV")  # a timed cut, a second later
        assert fine.wait(10) > 0
    finally:
        batcher.close(timeout=5)
