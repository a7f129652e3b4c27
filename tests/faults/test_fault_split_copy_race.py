"""A batch spooled by reference, copied into the spool while it is being split, does
not come back.

Splitting a batch into its shards' parts (:meth:`Spool.replace`) commits by removing the
whole's file; it forgot that the whole was spooled by reference only after that. The
copier (ClickHouse in trouble: every batch by reference is copied into the spool) could
copy the whole in between: its copy was renamed into the place just emptied and stayed
there, counted nowhere, its records on disk until the next start, which took the parts
it found gone for inserted and split the whole again: its records were sent twice.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from daemonthread import lines

from chworkers.daemon import filesource
from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.filesource import FileSource
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import PartSpec, Spool, SpooledBatch


class CopiedWhileSplit(Spool):
    """The copier's turn comes just as the whole's file is removed."""

    whole: SpooledBatch | None = None
    copied: bool | None = None

    def _unlink_durably(self, seq: int) -> None:
        super()._unlink_durably(seq)
        if self.whole is not None and seq == self.whole.seq:
            self.copied = self.materialize(self.whole)


def test_a_copy_made_while_a_batch_is_split_does_not_bring_the_whole_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesource, "REFERENCE_MIN_BYTES", 0)  # small, by reference all the same
    source = tmp_path / "a.json"
    source.write_bytes(lines(0, 100))
    spool = CopiedWhileSplit(tmp_path / "spool", SpoolSettings(fsync=False))
    batches: list[SpooledBatch] = []
    batcher = Batcher(spool, batches.append)
    FileSource(
        [str(source)],
        checkpoints=Checkpoints(tmp_path / "positions"),
        name="logs",
        table="events",
        format="JSONEachRow",
        batcher=batcher,
        limits=BatchLimits(max_rows=1000, max_delay=60),
        by_reference=True,
    ).run(threading.Event())
    batcher.close()
    [batch] = batches
    assert spool.by_reference() == [batch.seq]
    spool.whole = whole = spool.load(batch)
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
