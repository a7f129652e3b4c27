"""A batch spooled by reference whose copy is placed but whose folder fsync fails stays
by reference, said and counted rightly.

Copying a batch spooled by reference into the spool (when inserts fail) renames the copy
over the batch's file, then fsyncs the spool's folder. When that fsync failed (EIO),
the spool took the batch for one confirmed meanwhile: it said nothing, counted no copy,
and, the batch being neither by reference nor copied in its books, its files stayed
linked until the next start, and it was never copied again. Now the copy counts only
once durable: until then the batch stays by reference, its files linked (a crash may
bring back the file that names them), with a warning saying so; the next copy finishes
the job.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from daemonthread import lines
from prometheus_client import CollectorRegistry
from readbyref import read_by_reference

from chworkers.daemon import batchfile, filesource
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, read_batch
from chworkers.ops.metrics import Metrics


def test_a_copy_whose_folder_fsync_fails_stays_by_reference_until_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(filesource, "REFERENCE_MIN_BYTES", 0)
    metrics = Metrics(CollectorRegistry())
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=True), metrics=metrics)
    source = tmp_path / "a.json"
    source.write_bytes(lines(0, 100))
    (batch,) = read_by_reference(spool, [source], tmp_path / "positions")
    assert spool.by_reference() == [batch.seq]
    linked = {Path(e.path) for e in batch.extents}
    assert linked and all(p.exists() for p in linked)

    def eio(directory: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(batchfile, "fsync_directory", eio)
        assert spool.materialize(read_batch(batch.path)) is False
    assert "copied into the spool, but not durably" in caplog.text
    assert "Input/output error" in caplog.text
    assert spool.by_reference() == [batch.seq]  # still: its links are kept
    spool.links.refresh(force=True)
    assert all(p.exists() for p in linked)
    assert metrics.spool_reference_copies._value.get() == 0

    # The next copy is durable: now it is a copy, counted, and its links go.
    assert spool.materialize(read_batch(batch.path)) is True
    assert spool.by_reference() == []
    assert metrics.spool_reference_copies._value.get() == 1
    spool.links.refresh(force=True)
    assert not any(p.exists() for p in linked)
    assert read_batch(batch.path).payload == lines(0, 100)
    spool.remove(batch)
    assert Spool(tmp_path / "spool", SpoolSettings()).recover() == []
