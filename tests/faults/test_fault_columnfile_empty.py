"""An empty file matched by a columnar pipeline that does not follow: it never "settled"
(a size of 0 never counted as complete), so the source, and ``chworkers run`` with it,
never ended. Now it is a file like any other: unreadable, dead-lettered, done."""

from __future__ import annotations

import threading
from pathlib import Path

from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.columnsource import ColumnarFileSource
from chworkers.errors import ColumnarFileError


def test_an_empty_file_is_dead_lettered_and_the_run_ends(tmp_path: Path) -> None:
    (tmp_path / "empty.parquet").write_bytes(b"")
    bad: list[ColumnarFileError] = []
    source = ColumnarFileSource(
        [str(tmp_path / "*.parquet")],
        checkpoints=Checkpoints(tmp_path / "positions"),
        settle=0.05,
        poll_interval=0.01,
        bad_file=lambda pipeline, table, error: bad.append(error),
        name="p",
        table="ev",
        format="Parquet",
        batcher=None,  # type: ignore[arg-type]  # an unreadable file reaches no batcher
    )
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,), daemon=True)
    thread.start()
    thread.join(30)
    stop.set()
    assert not thread.is_alive(), "the source waited for an empty file for good"
    assert [(e.path, e.rows) for e in bad] == [(str(tmp_path / "empty.parquet"), "all")]
    assert source.files == 1
