"""A file replaced "durably" had its rename made durable too.

The embedded endpoint's flush files (the rows of a flush into several partitions, kept
until its ids are committed), its ids file and its repair of chDB's deduplication log
were written to a temporary name, fsync'd and renamed, but the directory was never
fsync'd: after a power failure the rename could be undone while the ids that rely on
it survive, and the flush would then count as written with partitions missing. They
now share :func:`chworkers.durable.replace_synced` with the daemon's spool, which
fsyncs the directory after the rename.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from chworkers.durable import replace_synced
from chworkers.embedded.asyncdedup import AsyncDedup


def record(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The fsyncs (of a file or a directory) and renames, in order (the real ones run)."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_the_directory_is_fsynced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = record(monkeypatch)
    target = tmp_path / "flush-1.native"
    target.write_bytes(b"old")
    replace_synced(target, b"new rows")
    assert events == ["fsync file", "rename", "fsync dir"]
    assert target.read_bytes() == b"new rows"
    assert [p.name for p in tmp_path.iterdir()] == ["flush-1.native"]


def test_a_flush_file_is_in_place_before_its_pending_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush file's rename is durable before the flush's ids are written pending."""
    table_dir = tmp_path / "store" / "abc" / "abcd1234-0000-0000-0000-000000000000"
    table_dir.mkdir(parents=True)
    dedup = AsyncDedup(tmp_path / "dedup")
    events = record(monkeypatch)
    dedup.begin(str(table_dir), 100, "f1", ["all_1_2"], rows=("flush-id", b"native rows"))
    assert events[:3] == ["fsync file", "rename", "fsync dir"], events
    assert "fsync file" in events[3:]  # then the pending ids, fsync'd
