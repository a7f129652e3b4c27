"""A rotation chain whose oldest file cannot be finished now is followed whole later.

Along logrotate's numbered rotation (``app.log.1`` to ``app.log.2``, then ``app.log`` to
``app.log.1``) a followed file whose name another takes and that is gone from the
patterns (``app.log.2``, deleted) is read to its end first; when it could not be (a stop
came, or its writer kept writing through eight reads), the move into its name waited for
the next poll, but the moves into the names it left did not: ``app.log`` moved into
``app.log.1``'s place while the file there had not moved on, which the source then
forgot, its descriptor left open. Found again at ``app.log.2`` as a new file at the
next poll, it was read from its start: every line of it twice. Now a move waits as long
as its new name is still taken.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from test_fault_follow_open_files import Pipeline, line


def test_moves_wait_behind_a_displaced_file_not_finished(tmp_path: Path) -> None:
    data = tmp_path / "logs"
    data.mkdir()
    pipeline = Pipeline(tmp_path)
    log, one, two = data / "app.log", data / "app.log.1", data / "app.log.2"
    two.write_bytes(b"".join(line(n) for n in range(0, 3)))
    one.write_bytes(b"".join(line(n) for n in range(3, 6)))
    log.write_bytes(b"".join(line(n) for n in range(6, 9)))
    source = pipeline.follow([str(data / "app.log*")])
    source._stop = threading.Event()
    try:
        source._discover()
        source._read_open()
        assert pipeline.numbers() == list(range(9))
        followed = {(f.dev, f.ino) for f in source._open.values()}
        assert len(followed) == 3

        two.unlink()  # logrotate's rotate 2: the oldest goes, the others move along
        os.rename(one, two)
        os.rename(log, one)
        log.write_bytes(line(9))
        with open(two, "ab") as fh:
            fh.write(line(10))
        source._stop.set()  # a stop while the chain is looked at: app.log.2 is not finished
        source._discover()
        idents = {(f.dev, f.ino) for f in source._open.values()}
        idents |= {(p.dev, p.ino) for p in source._parked.values()}
        assert followed - idents == set(), "a followed file was dropped"

        source._stop = threading.Event()  # (as after a restart, with its positions)
        for _ in range(4):
            source._discover()
            source._read_open()
        assert pipeline.numbers() == list(range(11))
    finally:
        for f in list(source._open.values()):
            f.fh.close()
        pipeline.batcher.close(timeout=10)
