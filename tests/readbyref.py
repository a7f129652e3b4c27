"""Reading files once into a spool by reference, as the daemon's file source does (for
tests of batches spooled by reference)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.filesource import FileSource
from chworkers.daemon.spool import Spool, SpooledBatch


def read_by_reference(
    spool: Spool,
    files: list[Path],
    positions: Path,
    *,
    max_rows: int = 1000,
    **source: Any,
) -> list[SpooledBatch]:
    """Read ``files`` once (JSONEachRow, into table ``events``) by reference into
    ``spool``; the batches spooled, oldest first. ``source``: more of FileSource's
    arguments (read_size, max_record_bytes, on_error...)."""
    batches: list[SpooledBatch] = []
    batcher = Batcher(spool, batches.append)
    FileSource(
        [str(f) for f in files],
        checkpoints=Checkpoints(positions),
        name="logs",
        table="events",
        format="JSONEachRow",
        batcher=batcher,
        limits=BatchLimits(max_rows=max_rows, max_delay=60),
        by_reference=True,
        **source,
    ).run(threading.Event())
    batcher.close()
    return sorted(batches, key=lambda b: b.seq)
