"""A finished followed file at a matched name is not reopened at every match, and a line
written to it late is read.

An open file whose path names another file at the end of a read is finished (rotated
away); renamed to a name the patterns match meanwhile (``app.log`` to ``app.log.1``
between the match and the read), it stays at that name, matched at every poll. Each
match opened it, read its first bytes to find it finished and closed it: an ``open`` per
finished file per poll (with many rotated logs, descriptors churned every
``poll_interval``), and a line its writer added after it was finished (the writer goes
on writing to the renamed file until it reopens its log) was never read: the reopen
found the same first bytes and closed it. Now a finished file is skipped on its
``stat`` (the same size and time as it was finished at); one grown since is read on from
where it ended, as a followed file renamed to a matched name is.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from test_fault_follow_open_files import Pipeline, line

_opened: list[str] = []
_watching: set[int] = set()


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and threading.get_ident() in _watching:
        _opened.append(os.fsdecode(args[0]) if isinstance(args[0], str | bytes) else "")


sys.addaudithook(_audit)  # (for the process's life: it counts only this test's thread)


def test_a_finished_file_is_not_reopened_and_its_late_lines_are_read(tmp_path: Path) -> None:
    data = tmp_path / "logs"
    data.mkdir()
    pipeline = Pipeline(tmp_path)
    log, one = data / "app.log", data / "app.log.1"
    log.write_bytes(b"".join(line(n) for n in range(5)))
    source = pipeline.follow([str(data / "app.log*")])
    source._stop = threading.Event()
    _watching.add(threading.get_ident())
    try:
        source._discover()
        source._read_open()
        os.rename(log, one)  # after the match, before the read
        log.write_bytes(line(5))
        source._read_open()  # app.log names another file: the old one is finished
        assert (one.stat().st_dev, one.stat().st_ino) in source._finished
        source._discover()
        source._read_open()
        assert pipeline.numbers() == [0, 1, 2, 3, 4, 5]

        _opened.clear()
        for _ in range(5):
            source._discover()
            source._read_open()
        assert str(one) not in _opened, f"opened {_opened.count(str(one))} times in 5 polls"

        with open(one, "ab") as fh:  # its writer had not reopened app.log yet
            fh.write(line(6))
        for _ in range(3):
            source._discover()
            source._read_open()
        assert pipeline.numbers() == [0, 1, 2, 3, 4, 5, 6]
    finally:
        _watching.discard(threading.get_ident())
        for f in list(source._open.values()):
            f.fh.close()
        pipeline.batcher.close(timeout=10)
