"""A spool directory the daemon's user cannot read is a clear error, not an OSError.

A state directory left by a run as another user (root, say, before the service's own
user took over) made the next start fail with a bare ``PermissionError`` traceback from
the spool's scan (``recover()``) or its set-up. Now an error names the
directory, the system's reason, and what to do (fix its owner or mode, or set
``state_dir`` elsewhere): ``chworkers run`` prints it on one line and exits with code 3
(an :class:`UnusablePathError`, a configuration error, since session 8: see
test_fault_startup_exit_codes.py).

Root reads everything: each check runs in a forked child that has dropped to ``nobody``
(its effective uid), as a service user would be.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def as_nobody(fn: Callable[[], object]) -> str:
    """What ``fn()`` raised (``Type: message``; ``ok`` when nothing), run as nobody."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave, whatever happens
        try:
            os.close(r)
            os.setegid(NOBODY)
            os.seteuid(NOBODY)
            try:
                fn()
                said = "ok"
            except BaseException as exc:
                said = f"{type(exc).__name__}: {exc}"
            os.write(w, said.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.read().decode()
    os.waitpid(pid, 0)
    return said


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody can reach (pytest's are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="chworkers-unreadable-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for p in sorted(path.rglob("*"), reverse=True):
            p.chmod(0o755)
        shutil.rmtree(path)


def _spool_of_root(shared_dir: Path, mode: int) -> Path:
    directory = shared_dir / "spool"
    spool = Spool(directory, SpoolSettings(fsync=False))
    spool.put("events", b'{"n":1}\n', format="JSONEachRow", rows=1)
    for path in directory.iterdir():
        path.chmod(0o644)  # its files readable: only the folder is in the way
    directory.chmod(mode)
    return directory


def test_a_spool_that_cannot_be_listed_is_a_clear_error(shared_dir: Path) -> None:
    directory = _spool_of_root(shared_dir, 0o733)  # others may enter, not list
    said = as_nobody(lambda: Spool(directory, SpoolSettings(fsync=False)).recover())
    assert said.startswith("UnusablePathError: cannot read the spool directory"), said
    assert str(directory) in said
    assert "Permission denied" in said
    assert "chown" in said and "state_dir" in said


def test_a_spool_that_cannot_be_entered_is_a_clear_error(shared_dir: Path) -> None:
    directory = _spool_of_root(shared_dir, 0o700)
    said = as_nobody(lambda: Spool(directory, SpoolSettings(fsync=False)).recover())
    assert said.startswith("UnusablePathError: cannot "), said
    assert str(directory) in said
    assert "Permission denied" in said
