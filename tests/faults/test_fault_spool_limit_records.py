"""A record the spool can never hold is skipped by file and stdin sources, as a push of
it is refused: one policy for the spool's limit.

``[spool] max_bytes`` (or the spool's filesystem, when smaller) is what the spool can
ever hold. A push of records over it was answered 413, but the file and stdin sources
added a record longer than that (up to 16 MiB) as a batch of its own, and an empty spool
took it, over its limit (a spool with batches in it made the source wait until it was
empty). Now such a record is skipped to its end, as one over 16 MiB is (a warning and
the source's error count), and the records around it go on.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from readbyref import read_by_reference

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.sources import StreamSource
from chworkers.daemon.spool import Spool, SpooledBatch, read_batch

pytestmark = pytest.mark.timeout(60)

LIMIT = 256 * 1024  # the spool's max_bytes


def test_stdin_skips_a_record_the_spool_can_never_hold(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", SpoolSettings(max_bytes=LIMIT, fsync=False))
    batches: list[SpooledBatch] = []
    batcher = Batcher(spool, batches.append, limits=BatchLimits(max_rows=1000, max_delay=60))
    errors: list[str] = []
    small = b"".join(b'{"n":%d}\n' % i for i in range(100))
    giant = b'{"n":-1,"s":"' + b"x" * (2 * LIMIT) + b'"}\n'
    source = StreamSource(
        io.BytesIO(small + giant + small),
        name="in",
        table="events",
        format="JSONEachRow",
        batcher=batcher,
        on_error=lambda name, message: errors.append(message),
    )
    source.run(threading.Event())
    batcher.close()
    assert len(errors) == 1 and "it was skipped" in errors[0], errors
    kept = b"".join(read_batch(b.path).payload for b in batches if b.path is not None)
    assert kept == small + small
    assert all(b.path is not None and b.path.stat().st_size <= LIMIT for b in batches)


@pytest.mark.parametrize("read_size", [64 * 1024, 4 * 1024 * 1024])
def test_a_file_skips_a_record_the_spool_can_never_hold(tmp_path: Path, read_size: int) -> None:
    """Read whole (the record within one read) or across reads, spooled by reference."""
    spool = Spool(tmp_path / "spool", SpoolSettings(max_bytes=LIMIT, fsync=False))
    small = b"".join(b'{"n":%d}\n' % i for i in range(100))
    giant = b'{"n":-1,"s":"' + b"x" * (2 * LIMIT) + b'"}\n'
    path = tmp_path / "a.json"
    path.write_bytes(small + giant + small)
    errors: list[str] = []
    batches = read_by_reference(
        spool,
        [path],
        tmp_path / "positions",
        read_size=read_size,
        on_error=lambda name, message: errors.append(message),
    )
    assert len(errors) == 1 and "it was skipped" in errors[0], errors
    kept = b"".join(spool.load(b).payload for b in batches)
    assert kept == small + small
