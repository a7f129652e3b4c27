"""An empty file matched by a columnar pipeline that does not follow: it never "settled"
(a size of 0 never counted as complete), so the source, and ``chworkers run`` with it,
never ended. Now it is a file like any other: unreadable, dead-lettered, done."""

from __future__ import annotations

import builtins
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


def test_a_file_that_cannot_be_opened_is_not_retried_at_every_poll(tmp_path: Path) -> None:
    """A followed pipeline tried a file it may not open again at every poll (an error
    logged and counted 4 times a second, for good); it is now skipped until the next
    start (nothing saved), or until it changes."""
    path = tmp_path / "locked.parquet"
    path.write_bytes(b"PAR1")
    errors: list[str] = []
    source = ColumnarFileSource(
        [str(tmp_path / "*.parquet")],
        checkpoints=Checkpoints(tmp_path / "positions"),
        settle=0,
        poll_interval=0.01,
        follow=True,
        name="p",
        table="ev",
        format="Parquet",
        batcher=None,  # type: ignore[arg-type]  # a file never opened reaches no batcher
        on_error=lambda name, message: errors.append(message),
    )
    stop = threading.Event()
    real_open = open

    def refuse(file: object, *args: object, **kwargs: object) -> object:
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    builtins.open = refuse  # type: ignore[assignment]  # as root, chmod would not refuse
    try:
        thread = threading.Thread(target=source.run, args=(stop,), daemon=True)
        thread.start()
        thread.join(0.5)  # some 50 polls
    finally:
        stop.set()
        thread.join(10)
        builtins.open = real_open
    assert len(errors) == 1 and "Permission denied" in errors[0], errors[:3]


def test_a_run_ends_when_files_settle_at_different_times(tmp_path: Path) -> None:
    """A file already read counted as one still settling, so a run that does not follow
    never ended once its files had settled in different polls (one still being written
    when another was read)."""
    pq_file = tmp_path / "a.parquet"
    pq_file.write_bytes(b"PAR1 first")
    bad: list[ColumnarFileError] = []
    source = ColumnarFileSource(
        [str(tmp_path / "*.parquet")],
        checkpoints=Checkpoints(tmp_path / "positions"),
        settle=0.2,
        poll_interval=0.01,
        bad_file=lambda pipeline, table, error: bad.append(error),
        name="p",
        table="ev",
        format="Parquet",
        batcher=None,  # type: ignore[arg-type]  # unreadable files reach no batcher
    )
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,), daemon=True)
    thread.start()
    # b.parquet keeps being written while a.parquet settles and is read
    with open(tmp_path / "b.parquet", "wb") as fh:
        for _ in range(40):
            fh.write(b"x")
            fh.flush()
            threading.Event().wait(0.01)
    thread.join(15)
    stop.set()
    assert not thread.is_alive(), "the run never ended"
    assert sorted(e.path for e in bad) == [str(pq_file), str(tmp_path / "b.parquet")]
