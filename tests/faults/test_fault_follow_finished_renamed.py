"""A finished followed file renamed along matched names while the paths are matched.

An open file whose path names another file at the end of a read is finished. Renamed
to a name the patterns match (logrotate's numbered rotation: ``app.log.1`` to
``app.log.2``), it is skipped there as a file finished; but a file that no matched path
named at one match was forgotten at once, and the rename can fall between the listing of
the paths and their ``stat`` (the old name listed, the new one not yet): at the next
match the file was new, read again from its start, every line of it twice (a 500-file
trial under logrotate inserted thousands of lines twice). Here the file is at no
matched name for one match, then at one again, with the source's steps driven by hand.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from test_fault_follow_open_files import Pipeline, line


def test_a_finished_file_briefly_at_no_matched_name_is_not_read_again(tmp_path: Path) -> None:
    data = tmp_path / "logs"
    data.mkdir()
    pipeline = Pipeline(tmp_path)
    log, one, two = data / "app.log", data / "app.log.1", data / "app.log.2"
    log.write_bytes(b"".join(line(n) for n in range(5)))
    source = pipeline.follow([str(data / "app.log*")])
    source._stop = threading.Event()
    try:
        source._discover()
        source._read_open()
        assert pipeline.numbers() == [0, 1, 2, 3, 4]
        os.rename(log, one)  # after the match, before the read
        log.write_bytes(line(5))
        source._read_open()  # app.log names another file: the old one is finished
        source._discover()
        source._read_open()
        assert pipeline.numbers() == [0, 1, 2, 3, 4, 5]
        hidden = data / "moving"  # between app.log.1 and app.log.2 for one match
        os.rename(one, hidden)
        source._discover()
        os.rename(hidden, two)
        for _ in range(3):
            source._discover()
            source._read_open()
        assert pipeline.numbers() == [0, 1, 2, 3, 4, 5]
    finally:
        for f in list(source._open.values()):
            f.fh.close()
        pipeline.batcher.close(timeout=10)
