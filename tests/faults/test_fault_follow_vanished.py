"""A followed file gone between its match and its open is no source error.

logrotate's ``rotate N`` renames the oldest to ``.N+1`` for a moment before deleting
it; a followed glob that matched it then, with the file waiting its turn for a
descriptor, failed to open it: a warning ("cannot open app.log.4: No such file or
directory") and a source error counted, for every rotation, with nothing wrong. A file
that is gone is simply not read, as a parked file gone is.
"""

from __future__ import annotations

import threading
from pathlib import Path

from test_fault_follow_open_files import Pipeline, line


def test_a_followed_file_gone_before_its_turn_is_no_error(tmp_path: Path) -> None:
    data = tmp_path / "logs"
    data.mkdir()
    pipeline = Pipeline(tmp_path)
    (data / "a.log").write_bytes(line(0))
    (data / "b.log").write_bytes(line(1))
    errors: list[str] = []
    source = pipeline.follow(
        [str(data / "*.log")],
        max_open_files=1,
        close_idle_after=0,
        on_error=lambda name, message: errors.append(message),
    )
    source._stop = threading.Event()
    try:
        source._discover()  # a.log open, b.log waiting its turn
        assert list(source._pending) == [str(data / "b.log")]
        (data / "b.log").unlink()
        source._read_open()
        source._make_room()
        source._open_pending(source._identities())
        assert errors == []
        assert pipeline.numbers() == [0]
    finally:
        for f in list(source._open.values()):
            f.fh.close()
        pipeline.batcher.close(timeout=10)
