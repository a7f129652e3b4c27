"""Splitting a batch into its shards' parts commits by removing the whole's file:
nothing that happens around that removal doubles or loses the batch.

A batch spooled by reference, copied into the spool while it is being split, does not
come back: :meth:`Spool.replace` forgot that the whole was spooled by reference only
after removing its file. The
copier (ClickHouse in trouble: every batch by reference is copied into the spool) could
copy the whole in between: its copy was renamed into the place just emptied and stayed
there, counted nowhere, its records on disk until the next start, which took the parts
it found gone for inserted and split the whole again: its records were sent twice.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from daemonthread import lines
from readbyref import read_by_reference

from chworkers.daemon import filesource
from chworkers.daemon import spool as spool_module
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import PartSpec, Spool, SpooledBatch, read_batch


class CopiedWhileSplit(Spool):
    """The copier's turn comes just as the whole's file is removed."""

    whole: SpooledBatch | None = None
    copied: bool | None = None

    def _unlink_durably(self, seq: int) -> bool:
        durable = super()._unlink_durably(seq)
        if self.whole is not None and seq == self.whole.seq:
            self.copied = self.materialize(self.whole)
        return durable


def _by_reference(spool: Spool, tmp_path: Path) -> SpooledBatch:
    """A batch of 100 rows spooled by reference (its file's link in the spool)."""
    source = tmp_path / "a.json"
    source.write_bytes(lines(0, 100))
    batches = read_by_reference(spool, [source], tmp_path / "positions")
    [batch] = batches
    assert spool.by_reference() == [batch.seq]
    return spool.load(batch)


def test_a_copy_made_while_a_batch_is_split_does_not_bring_the_whole_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesource, "REFERENCE_MIN_BYTES", 0)  # small, by reference all the same
    spool = CopiedWhileSplit(tmp_path / "spool", SpoolSettings(fsync=False))
    spool.whole = whole = _by_reference(spool, tmp_path)
    half = whole.payload.index(b"\n", len(whole.payload) // 2) + 1
    parts = spool.replace(
        whole,
        [
            PartSpec(whole.payload[:half], 50, f"{whole.token}:0", {"shard": 0}),
            PartSpec(whole.payload[half:], 50, f"{whole.token}:1", {"shard": 1}),
        ],
    )
    assert spool.copied is False  # the whole was no longer by reference: nothing to copy
    assert not (spool.directory / f"{whole.seq:020d}.batch").exists()
    assert spool.by_reference() == []
    for part in parts:
        spool.remove(part)
    assert sorted(p.name for p in spool.directory.glob("*.batch")) == []
    spool.links.refresh(force=True)
    links = spool.directory / "links"
    assert not links.exists() or list(links.iterdir()) == []
    # The next start finds nothing to insert again.
    again = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    assert again.recover() == []


def test_a_split_whose_removal_cannot_be_fsynced_keeps_its_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole's file removed, the spool's folder then failing its fsync (EIO): the
    split was rolled back by removing its parts, with the whole already gone: the batch
    was nowhere, its records lost. Now the split stands, with a warning."""
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=True))
    whole = spool.put("events", lines(0, 100), format="JSONEachRow", rows=100)
    half = whole.payload.index(b"\n", len(whole.payload) // 2) + 1

    def eio(directory: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module, "fsync_directory", eio)  # the folder's fsync, not the parts'
    parts = spool.replace(
        whole,
        [
            PartSpec(whole.payload[:half], 50, f"{whole.token}:0", {"shard": 0}),
            PartSpec(whole.payload[half:], 50, f"{whole.token}:1", {"shard": 1}),
        ],
    )
    assert b"".join(read_batch(p.path).payload for p in parts if p.path) == whole.payload
    assert not (spool.directory / f"{whole.seq:020d}.batch").exists()
    assert "may be split again" in caplog.text
    assert sorted(b.seq for b in Spool(tmp_path / "spool", SpoolSettings()).recover()) == [
        p.seq for p in parts
    ]


def test_a_split_whose_removal_cannot_be_fsynced_keeps_the_links_until_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until the whole's removal is durable a crash may bring it back, by reference: the
    link it names must still be there then (it was removed at once: the whole came back
    naming nothing, was quarantined, and its parts, taken for a split cut short, were
    removed: its rows lost)."""
    monkeypatch.setattr(filesource, "REFERENCE_MIN_BYTES", 0)
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=True))
    whole = _by_reference(spool, tmp_path)
    half = whole.payload.index(b"\n", len(whole.payload) // 2) + 1

    def eio(directory: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module, "fsync_directory", eio)
    parts = spool.replace(
        whole,
        [
            PartSpec(whole.payload[:half], 50, f"{whole.token}:0", {"shard": 0}),
            PartSpec(whole.payload[half:], 50, f"{whole.token}:1", {"shard": 1}),
        ],
    )
    monkeypatch.undo()
    linked = {e.path for e in whole.extents}
    spool.links.refresh(force=True)
    assert all(Path(path).exists() for path in linked)
    for part in parts:
        spool.remove(part)
    assert all(Path(path).exists() for path in linked)
    # The next start finds no batch naming them: they go then.
    assert Spool(tmp_path / "spool", SpoolSettings()).recover() == []
    assert not any(Path(path).exists() for path in linked)
