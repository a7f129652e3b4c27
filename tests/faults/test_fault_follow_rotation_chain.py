"""A followed file renamed along a chain of matched names is followed there.

logrotate's numbered rotation renames ``app.log.1`` to ``app.log.2``, then ``app.log``
to ``app.log.1``, and creates ``app.log``: with ``paths = ["app.log*"]`` all three are
followed. A file renamed to a name the patterns match is the same file under its new
name (docs/daemon.md), but ``app.log`` renamed to ``app.log.1`` was taken for a rotation
away when ``app.log.1`` was followed already (its old file, now ``app.log.2``): it was
finished, and what its writer, not yet reopened, wrote to it after was never read.
With ``rotate N`` the oldest is deleted first: it is finished (read to its end) before
another takes its name.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from test_fault_follow_open_files import Pipeline, line
from waiting import wait_for


def test_numbered_rotation_follows_each_file_to_its_new_name(tmp_path: Path) -> None:
    data = tmp_path / "logs"
    data.mkdir()
    pipeline = Pipeline(tmp_path)
    log, one, two = data / "app.log", data / "app.log.1", data / "app.log.2"
    one.write_bytes(line(0))
    log.write_bytes(line(1))
    source = pipeline.follow([str(data / "app.log*")])
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: pipeline.numbers() == [0, 1], timeout=20)
        with open(log, "ab") as writer:  # the application's descriptor, kept
            os.rename(one, two)
            os.rename(log, one)
            log.write_bytes(line(2))
            wait_for(lambda: pipeline.numbers() == [0, 1, 2], timeout=20)
            time.sleep(0.3)  # a few polls: each file's rename is seen
            writer.write(line(3))  # late, into the old file (app.log.1 now)
        wait_for(lambda: pipeline.numbers() == [0, 1, 2, 3], timeout=10)
        # ``rotate 2``: the oldest is deleted first (its last line still to read), then
        # the others move along; its name taken, it is finished first.
        with open(log, "ab") as writer:
            with open(two, "ab") as oldest:
                oldest.write(line(4))
            two.unlink()
            os.rename(one, two)
            os.rename(log, one)
            log.write_bytes(line(5))
            wait_for(lambda: pipeline.numbers() == [0, 1, 2, 3, 4, 5], timeout=20)
            time.sleep(0.3)
            writer.write(line(6))
        wait_for(lambda: pipeline.numbers() == [0, 1, 2, 3, 4, 5, 6], timeout=10)
        time.sleep(0.2)
        assert pipeline.numbers() == [0, 1, 2, 3, 4, 5, 6]
    finally:
        stop.set()
        thread.join(10)
        pipeline.batcher.close(timeout=10)
