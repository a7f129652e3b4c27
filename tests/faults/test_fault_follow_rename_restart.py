"""A followed file rotated by rename, then the daemon restarted.

Positions are saved by path. When ``app.log`` is renamed to ``app.log.1`` and a new
``app.log`` is written, the new file's first batch took over the path's entry: the old
file's position was dropped, so after a restart (a clean stop as much as a kill)
nothing matched ``app.log.1``'s inode and it was read again from its start, every line
of it twice (a 500-file trial under logrotate inserted 16,268 lines twice).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from test_fault_follow_open_files import Pipeline, line
from waiting import wait_for


def _run(data: Path, pipeline: Pipeline, body: Callable[[], None]) -> None:
    source = pipeline.follow([str(data / "app.log*")])
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,))
    thread.start()
    try:
        body()
    finally:
        stop.set()
        thread.join(10)
        pipeline.batcher.close(timeout=10)


def test_a_file_rotated_by_rename_is_not_read_again_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "logs"
    data.mkdir()
    log, one = data / "app.log", data / "app.log.1"
    log.write_bytes(b"".join(line(n) for n in range(5)))
    first = Pipeline(tmp_path)

    def rotate() -> None:
        wait_for(lambda: first.numbers() == [0, 1, 2, 3, 4], 20, what="the first lines")
        os.rename(log, one)
        log.write_bytes(line(5))
        wait_for(lambda: first.numbers() == [0, 1, 2, 3, 4, 5], 20, what="the new file")

    _run(data, first, rotate)
    first.checkpoints.close()
    # Both files keep a position: the new one under the path, the rotated one found by
    # its inode (under whatever key), so the restart resumes each at its end.
    saved = first.checkpoints.load("logs")
    inodes = {(pos["ino"], pos["offset"]) for pos in saved.values()}
    assert (one.stat().st_ino, one.stat().st_size) in inodes
    assert (log.stat().st_ino, log.stat().st_size) in inodes

    second = Pipeline(tmp_path)
    with (data / "app.log").open("ab") as fh:
        fh.write(line(6))

    def idle() -> None:
        wait_for(lambda: second.numbers() == [6], 20, what="the line written while stopped")
        time.sleep(0.3)  # time for a wrong re-read of app.log.1 to show

    _run(data, second, idle)
    assert second.numbers() == [6]
