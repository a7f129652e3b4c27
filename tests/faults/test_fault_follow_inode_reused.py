"""A closed followed file gone from its path, its inode now another file's.

A followed file closed for a descriptor (parked) whose path names another file or none
is looked for by its inode in its directory (rotated away). But the inode may be
another file's by then: logrotate deletes ``rotate``'s oldest and makes a
``copytruncate`` copy or a ``create``'d file next, which the file system gives the
freed inode. That file was taken for the parked one "rewritten while closed" and read
whole from its start under the parked file's name: a copytruncate copy of a followed log
(every line of it read before) was inserted a second time, rotation after rotation.
A file at the inode that does not start with the parked file's first bytes is not it:
the parked file was deleted.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from test_fault_follow_open_files import Pipeline, line, open_in
from waiting import wait_for


def test_a_parked_files_inode_taken_by_another_file_is_not_read(tmp_path: Path) -> None:
    data = tmp_path / "logs"
    data.mkdir()
    pipeline = Pipeline(tmp_path)
    log = data / "app-a.log"
    log.write_bytes(b"".join(line(n) for n in range(5)))
    source = pipeline.follow(
        [str(data / "app-*.log")],
        close_idle_after=0.05,
    )
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: pipeline.numbers() == [0, 1, 2, 3, 4], timeout=20)
        wait_for(lambda: open_in(data) == 0, timeout=20)  # idle: parked
        # The inode becomes another file's, at a name the patterns do not match: the
        # same as app-a.log deleted and its inode given to a copy made next (a test
        # cannot make the file system reuse an inode), new bytes from its start.
        other = data / "app-b.log.1"
        os.rename(log, other)
        with open(other, "r+b") as f:
            f.write(b"".join(line(n) for n in range(100, 110)))
        log.write_bytes(line(5))  # a new app-a.log
        wait_for(lambda: pipeline.numbers() == [0, 1, 2, 3, 4, 5], timeout=20)
        time.sleep(0.3)  # a few polls more
        assert pipeline.numbers() == [0, 1, 2, 3, 4, 5]
    finally:
        stop.set()
        thread.join(10)
        pipeline.batcher.close(timeout=10)
