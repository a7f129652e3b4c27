"""An open followed file truncated and written past its offset between two polls.

logrotate's ``copytruncate`` empties the live file while its writer goes on: by the next
poll the file may hold more new bytes than were read of the old content. The file was
only taken for truncated when it was found shorter than its offset, so the source read
on from the old offset in the new content: the new lines before it were never read and
the line across it was cut in two (a torn record ClickHouse rejects). The first bytes
tell the new content apart, as they do for a closed file (docs/daemon.md).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from test_fault_follow_open_files import Pipeline, line
from waiting import wait_for


def records(pipeline: Pipeline) -> list[bytes]:
    pipeline.batcher.flush()
    payload = b"".join(b.payload for b in sorted(pipeline.batches, key=lambda b: b.seq))
    return payload.splitlines()


def test_truncated_and_regrown_between_polls_is_read_from_its_start(tmp_path: Path) -> None:
    data = tmp_path / "logs"
    data.mkdir()
    pipeline = Pipeline(tmp_path)
    log = data / "app.log"
    log.write_bytes(b"".join(line(n) for n in range(10)))
    source = pipeline.follow(
        [str(log)],
        poll_interval=2.0,  # the truncation and the new lines fall between two polls
    )
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,))
    thread.start()
    try:
        first = [line(n).rstrip(b"\n") for n in range(10)]
        wait_for(lambda: records(pipeline) == first, timeout=20)
        time.sleep(0.3)  # the source is at the file's end, waiting for its next poll
        with open(log, "ab") as writer:  # O_APPEND, as a logger's descriptor
            os.truncate(log, 0)  # copytruncate: the copy is made, the file emptied
            writer.write(b"".join(line(n) for n in range(100, 130)))  # more than was read
        second = [line(n).rstrip(b"\n") for n in range(100, 130)]
        wait_for(lambda: len(records(pipeline)) >= 40, timeout=20)
        time.sleep(0.3)
        assert records(pipeline) == first + second
    finally:
        stop.set()
        thread.join(10)
        pipeline.batcher.close(timeout=10)
