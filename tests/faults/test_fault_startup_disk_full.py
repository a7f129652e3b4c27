"""A start stopped by a full disk exits 1 (restarted), not 3 (left down).

Start-up failures of the state's folders became :class:`UnusablePathError`, a
configuration error: ``chworkers run`` exits 3, which systemd does not restart. That is
right for a folder of another user's, a file in the way, a read-only file system; but
the same was said of a disk that was full (ENOSPC) or failing (EIO) for a moment: the
daemon stayed down after room was freed, until somebody started it by hand. A reason
that may pass is now a :class:`StatePathError`: exit 1, restarted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fault_startup_exit_codes import _run

from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.deadletter import DeadLetters
from chworkers.errors import ConfigError, StatePathError

pytestmark = pytest.mark.timeout(150)


@contextlib.contextmanager
def no_inodes_left(path: Path) -> Iterator[None]:
    """A tmpfs on ``path`` whose every inode is taken (a new file or folder: ENOSPC),
    ``daemon.lock`` made first (the state's lock is taken before its folders are made)."""
    path.mkdir(parents=True)
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None or os.environ.get("CHWORKERS_TEST_NO_TMPFS"):
        pytest.skip("mounting a tmpfs is not permitted here")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=1m,nr_inodes=32,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr!r}")
    try:
        (path / "daemon.lock").write_text("")
        for n in range(1000):
            try:
                (path / f"taken-{n}").write_bytes(b"")
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def test_a_full_disk_at_start_is_tried_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with no_inodes_left(state):
        for make in (
            lambda: Checkpoints(state / "positions"),
            lambda: DeadLetters(state / "dead-letter").ready(),
        ):
            with pytest.raises(StatePathError) as raised:
                make()
            assert not isinstance(raised.value, ConfigError)
            assert "No space left on device" in str(raised.value)
        proc = _run(state, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "configuration error" not in proc.stderr, proc.stderr
    assert f"cannot create the spool directory {state / 'spool'}" in proc.stderr, proc.stderr
    assert "No space left on device" in proc.stderr, proc.stderr
