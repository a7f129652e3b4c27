"""A batch never holds more than ``max_rows`` records or ``max_bytes`` bytes.

The batcher added a source's whole read (1 MiB of records) to the open batch and cut
it only once it had gone past a limit, so batches came out larger than asked: up to
``max_rows`` plus a read's worth of records (issue 11: the daemon's 100,000-row batches
were up to 114,000). Records that would take the open batch past a limit now start
the next batch, and sources add at most a batch's worth at a time, each piece with the
file position where it ends, so that a position saved with a batch is exactly where its
records end.
"""

from __future__ import annotations

import threading
from pathlib import Path

from waiting import wait_for

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.filesource import FileSource
from chworkers.daemon.framing import pieces
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch


def _read(
    tmp_path: Path, name: str, data: bytes, fmt: str, limits: BatchLimits
) -> list[SpooledBatch]:
    (tmp_path / name).write_bytes(data)
    batches: list[SpooledBatch] = []
    spool = Spool(tmp_path / f"spool-{name}", SpoolSettings(fsync=False))
    batcher = Batcher(spool, batches.append, limits=limits)
    source = FileSource(
        [str(tmp_path / name)],
        checkpoints=Checkpoints(tmp_path / f"positions-{name}"),
        name="logs",
        table="events",
        format=fmt,
        batcher=batcher,
        limits=limits,
    )
    source.run(threading.Event())  # not following: reads the file to its end
    batcher.close()
    return sorted(batches, key=lambda b: b.seq)


def test_file_batches_stay_within_max_rows_and_positions_match(tmp_path: Path) -> None:
    data = b"".join(b'{"n":%d}\n' % i for i in range(25_000))
    batches = _read(
        tmp_path, "a.json", data, "JSONEachRow", BatchLimits(max_rows=1000, max_delay=60)
    )
    assert max(b.rows for b in batches) == 1000
    assert sum(b.rows for b in batches) == 25_000
    assert b"".join(b.payload for b in batches) == data
    # Each batch's saved position is where its records end in the file.
    ends = [b.meta["files"][str(tmp_path / "a.json")]["offset"] for b in batches]
    assert ends == [sum(len(b.payload) for b in batches[: i + 1]) for i in range(len(batches))]


def test_file_batches_stay_within_max_bytes_with_quoted_newlines(tmp_path: Path) -> None:
    record = b'1,"two\nlines, ""quoted"""\n'
    data = record * 5000 + b"\n"  # and an empty line at the end
    limits = BatchLimits(max_bytes=len(record) * 300 + 5, max_delay=60)
    batches = _read(tmp_path, "b.csv", data, "CSV", limits)
    assert max(len(b.payload) for b in batches) <= limits.max_bytes
    assert sum(b.rows for b in batches) == 5000
    assert b"".join(b.payload for b in batches).rstrip(b"\n") == data.rstrip(b"\n")
    assert all(b.payload.count(b'"') % 2 == 0 for b in batches)  # whole records only


def test_adds_that_would_overflow_start_the_next_batch(tmp_path: Path) -> None:
    got: list[SpooledBatch] = []
    batcher = Batcher(Spool(tmp_path), got.append, limits=BatchLimits(max_rows=10, max_delay=60))
    for i in range(7):
        batcher.add("t", b'{"i":%d}\n' % i * 3, 3, format="JSONEachRow", meta={"at": i})
    wait_for(lambda: len(got) == 2, timeout=5, what="two batches cut")
    batcher.close()
    assert [b.rows for b in sorted(got, key=lambda b: b.seq)] == [9, 9, 3]
    assert [b.meta for b in sorted(got, key=lambda b: b.seq)] == [{"at": 2}, {"at": 5}, {"at": 6}]


def test_pieces_cut_at_record_boundaries() -> None:
    records = b'{"a":1}\n\n{"a":2}\n{"a":3}\n'
    assert list(pieces(records, "JSONEachRow", 2, 1 << 20)) == [
        (b'{"a":1}\n\n{"a":2}\n', 2, 17),
        (b'{"a":3}\n', 1, 25),
    ]
