"""The state directory's lock: one process at a time on a daemon's state.

Two daemons on one state directory would replay each other's spool and overwrite each
other's positions, so ``chworkers run`` (and ``chworkers check``, when it starts the
embedded ClickHouse on that directory) holds ``daemon.lock`` there for as long as it
runs. The lock is ``flock``: the kernel drops it when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from chworkers import forkguard
from chworkers.daemon.statepaths import passing
from chworkers.errors import StateDirInUseError, StatePathError, UnusablePathError

__all__ = ["state_lock"]


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir`` for one process (a daemon, or ``check`` starting its endpoint)."""
    path = state_dir / "daemon.lock"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115 (held for the daemon's life)
    except OSError as exc:  # a file in the way, no permission, a read-only file system
        why = f"{exc.strerror or exc} ({exc.filename or path})"
        if passing(exc):  # the disk full, an I/O error: tried again at the next start
            raise StatePathError(
                f"state_dir = {str(state_dir)!r} cannot be used now: {why}; the start is "
                "given up and tried again (exit code 1, restarted by systemd)",
                path=str(exc.filename or state_dir),
            ) from exc
        if isinstance(exc, FileExistsError):
            why = f"{exc.filename or state_dir} is a file, not a directory"
        elif isinstance(exc, NotADirectoryError):
            why = "a part of its path is a file, not a directory"
        raise UnusablePathError(
            f"state_dir = {str(state_dir)!r} cannot be used: {why}; "
            "set state_dir, CHWORKERS_STATE_DIR or --state-dir "
            "to a directory the daemon can create and write",
            key="state_dir",
            value=str(state_dir),
            expected="a directory the daemon can create and write",
            path=str(exc.filename or state_dir),
        ) from exc
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise StateDirInUseError(
            f"state directory {state_dir} is in use by {holder}; run one daemon per "
            "state directory (set state_dir or CHWORKERS_STATE_DIR)",
            holder=holder,
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"chworkers pid {os.getpid()}\n")
    fh.flush()
    forkguard.close_in_child(fh)  # a forked worker outliving us must not hold it
    try:
        yield
    finally:
        fh.close()
