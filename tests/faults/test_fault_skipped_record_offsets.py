"""Records read together with the start of a record too long are placed where they are
in their file.

A read that completed some records and left a record with no end past
``max_record_bytes`` had the framer drop that record's start; the file source took the
records to end where the kept bytes began (the read's end less what the framer holds),
which the dropped bytes made wrong: spooled by reference, the batch named bytes of the
giant record instead (its sample checksum then refused it, and its rows went to
quarantine), and the position saved with them was inside the giant record (a restart
read the rest of it as a record of its own).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from daemonthread import lines
from readbyref import read_by_reference

from chworkers.daemon import filesource
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool


def test_records_before_a_dropped_record_are_referenced_where_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesource, "REFERENCE_MIN_BYTES", 0)  # small, by reference all the same
    before, after = lines(0, 20), lines(20, 40)
    giant = b'{"n":99,"s":"' + b"x" * 6000 + b'"}\n'
    source = tmp_path / "a.json"
    source.write_bytes(before + giant + after)
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    errors: list[str] = []
    batches = read_by_reference(
        spool,
        [source],
        tmp_path / "positions",
        max_rows=20,  # a batch before it, one after
        read_size=4096,  # one read: the records before it and 3.5 KiB of the giant one
        max_record_bytes=1000,
        on_error=lambda name, message: errors.append(message),
    )
    assert len(errors) == 1 and "skipped" in errors[0], errors
    assert batches and all(b.extents for b in batches)
    assert b"".join(spool.load(b).payload for b in batches) == (before + after)
    # The position saved with the records before it is where the giant record starts.
    first = batches[0]
    assert first.meta["files"][str(source)]["offset"] == len(before)
