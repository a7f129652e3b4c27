"""The spool when its disk is full: nothing half-written stays, nothing is lost, no batch
number is handed out twice (issue 9, item 2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from smalldisk import disk_full, small_filesystem

from chworkers.errors import SpoolWriteError
from chworkers.metrics import Metrics
from chworkers.spool import Spool


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
    spool = Spool(path / "spool", fsync=True, metrics=metrics)
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
    spool = Spool(path / "spool", fsync=True)
    with disk_full(path, tmpfs=tmpfs), pytest.raises((SpoolWriteError, OSError)):
        spool.put("t", b"1\n", format="CSV", rows=1)  # the first put persists the numbers
    used = spool.put("t", b"2\n", format="CSV", rows=1)
    spool.remove(used)  # confirmed by ClickHouse, gone from the spool
    again = Spool(path / "spool", fsync=True)
    again.recover()
    later = [again.put("t", b"%d\n" % i, format="CSV", rows=1) for i in range(3)]
    assert used.token not in {b.token for b in later}
    assert all(b.seq > used.seq for b in later)
