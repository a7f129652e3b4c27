"""A batch is never larger than the spool's disk can hold: a source is not wedged.

With the spool's state directory on a small disk (an 8 MiB filesystem, here 4 MiB), a
stdin or file source cut its batches at the pipeline's ``max_bytes`` (16 MiB by
default): the first full batch could never be written, whatever ClickHouse did, and the
source waited on it forever ("the spool refused a batch of 84,236 rows (attempt 290, for
588 s): No space left on device", long after ClickHouse was back and the spool empty).
Batches are now cut at a quarter of what the spool can ever hold, with a warning.
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import pytest
from smalldisk import small_filesystem

from chworkers.daemon.batcher import Batcher
from chworkers.daemon.batchfile import SpooledBatch
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.sources import StreamSource
from chworkers.daemon.spool import Spool

pytestmark = pytest.mark.timeout(120)


def test_stdin_larger_than_the_spool_disk_goes_through_in_batches_that_fit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = 50_000  # ~11 MB: more than the disk, in one default batch's worth of reads
    data = b"".join(b'{"n":%d,"s":"%s"}\n' % (i, b"x" * 200) for i in range(n))
    with small_filesystem(tmp_path / "small", size_mib=4) as tmpfs:
        if not tmpfs:
            pytest.skip("no tmpfs can be mounted here")
        spool = Spool(tmp_path / "small" / "spool", SpoolSettings(fsync=False))
        taken: list[int] = []

        def take(batch: SpooledBatch) -> None:  # ClickHouse takes each batch at once
            taken.append(batch.rows)
            spool.remove(batch)

        with caplog.at_level(logging.WARNING, logger="chworkers.daemon.batcher"):
            batcher = Batcher(spool, take)  # the default limits: 16 MiB batches
            source = StreamSource(
                io.BytesIO(data), name="in", table="ev", format="JSONEachRow", batcher=batcher
            )
            stop = threading.Event()
            reading = threading.Thread(target=source.run, args=(stop,), daemon=True)
            reading.start()
            reading.join(60)
            wedged = reading.is_alive()
            stop.set()
            batcher.close(timeout=5)  # gives up on a batch that never fits
            reading.join(10)
        assert not wedged, "the source waited for a batch the disk can never hold"
        assert sum(taken) == n, "rows never spooled: a batch larger than the disk waits forever"
        assert max(taken) < n
        assert "are cut at 1048576 bytes instead of 16777216" in caplog.text
