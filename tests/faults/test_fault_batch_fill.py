"""A file source's batches hold ``max_rows`` records, not what whole reads fitted.

Records that would take the open batch past a limit started the next batch, and a
source added a whole read (1 MiB) at a time, so a batch was cut at the last read that
fitted: the benchmark's 1,000,000 lines in batches of 100,000 went in as 11 or 12
inserts of about 85,000 rows (more requests and more parts than a client posting
100,000 lines at a time, the comparison issue 11 sets). The source now cuts its read
where the open batch is full (``Batcher.room``), so every batch but the last holds
exactly ``max_rows`` records, or as many as ``max_bytes`` takes.

Also here: a run of empty lines counted half of them as records (``count(b"\\n\\n")``
does not count overlapping pairs), so a batch's row count could exceed its records.
"""

from __future__ import annotations

import threading
from pathlib import Path

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.filesource import FileSource
from chworkers.daemon.framing import Framer, count_lines, pieces
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch


def _read(tmp_path: Path, data: bytes, limits: BatchLimits, read_size: int) -> list[SpooledBatch]:
    (tmp_path / "a.json").write_bytes(data)
    batches: list[SpooledBatch] = []
    batcher = Batcher(Spool(tmp_path / "spool", SpoolSettings(fsync=False)), batches.append)
    source = FileSource(
        [str(tmp_path / "a.json")],
        checkpoints=Checkpoints(tmp_path / "positions"),
        name="logs",
        table="events",
        format="JSONEachRow",
        batcher=batcher,
        limits=limits,
        read_size=read_size,
    )
    source.run(threading.Event())  # not following: reads the file to its end
    batcher.close()
    return sorted(batches, key=lambda b: b.seq)


def test_batches_are_filled_to_max_rows(tmp_path: Path) -> None:
    # Reads of 4 KiB hold ~230 records of varying length: no read ends on a batch's edge.
    data = b"".join(b'{"n":%d,"s":"%s"}\n' % (i, b"x" * (i % 7)) for i in range(25_000))
    batches = _read(tmp_path, data, BatchLimits(max_rows=1000, max_delay=60), 4096)
    assert [b.rows for b in batches] == [1000] * 25
    assert b"".join(b.payload for b in batches) == data
    # Each batch's saved position is where its records end in the file.
    ends = [b.meta["files"][str(tmp_path / "a.json")]["offset"] for b in batches]
    assert ends == [sum(len(b.payload) for b in batches[: i + 1]) for i in range(len(batches))]


def test_batches_are_filled_to_max_bytes(tmp_path: Path) -> None:
    record = b'{"n":1}\n'  # 8 bytes
    data = record * 10_000
    batches = _read(tmp_path, data, BatchLimits(max_bytes=8 * 300 + 5, max_delay=60), 1000)
    assert [len(b.payload) for b in batches[:-1]] == [8 * 300] * (len(batches) - 1)
    assert sum(b.rows for b in batches) == 10_000


def test_runs_of_empty_lines_are_no_records() -> None:
    records = b'{"a":1}\n\n\n\n{"a":2}\n\n\n'
    assert count_lines(records) == 2
    assert Framer("JSONEachRow").feed(records) == (records, 2)
    assert [n for _, n, _ in pieces(records, "JSONEachRow", 1, 1 << 20)] == [1, 1]


def test_the_first_piece_fills_the_room_left() -> None:
    records = b"".join(b'{"a":%d}\n' % i for i in range(10))
    cut = list(pieces(records, "JSONEachRow", 4, 1 << 20, first=(3, 1 << 20)))
    assert [n for _, n, _ in cut] == [3, 4, 3]
    assert b"".join(p for p, _, _ in cut) == records
    # No room at all: the records start the next batch.
    assert [n for _, n, _ in pieces(records, "JSONEachRow", 4, 99, first=(0, 0))] == [4, 4, 2]
