"""The folders of the state directory at start: each one usable by the daemon's user.

The spool, the positions and the dead letters live under ``state_dir``. One the daemon
cannot create, enter or write (left by a run as another user, on a read-only file
system, a file in its place) would fail later, a batch, a save or a letter at a time,
and no restart would fix it. So each is made ready as the daemon starts, and one that
cannot be is an :class:`~chworkers.errors.UnusablePathError` naming it, the system's
reason and what to do: ``chworkers run`` exits 3, which systemd does not restart
(docs/daemon.md, "Exit codes"). A reason that may pass by itself (the disk full, an I/O
error: :func:`passing`) is a :class:`~chworkers.errors.StatePathError` instead: exit 1,
restarted, so the daemon comes back once there is room again.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from chworkers.errors import StatePathError, UnusablePathError

__all__ = ["passing", "probe_writable", "unusable", "writable_dir"]

#: Errors that may pass without anybody changing the configuration, a path's owner or
#: its mode: room freed, a disk or a network file system answering again.
_PASSING = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.EAGAIN,
        errno.EINTR,
        errno.ENOMEM,
        errno.ENFILE,
        errno.EBUSY,
    }
)

#: What to do about any of them.
_FIX = (
    "the daemon's user must be able to read and write it and everything in it "
    "(fix its owner or mode, e.g. chown -R, or set state_dir to another directory)"
)


#: What to do about a file where a directory belongs (its owner and mode are not it).
_FIX_IN_THE_WAY = "move or remove that file, or set state_dir to another directory"


def passing(exc: OSError) -> bool:
    """Whether ``exc`` may pass by itself (the disk full, an I/O error), so that a start
    it stopped is tried again, rather than a path to fix."""
    return exc.errno in _PASSING


def unusable(what: str, path: Path, exc: OSError, doing: str) -> UnusablePathError | StatePathError:
    """The error of ``what`` (``"spool directory"``, ``"positions file"``...) at ``path``
    that the daemon cannot ``doing`` (``"read"``, ``"create"``...): what, where, why and
    what to do; a :class:`StatePathError` when the reason may pass (:func:`passing`)."""
    where = exc.filename or path
    if passing(exc):
        return StatePathError(
            f"cannot {doing} the {what} {path}: {exc.strerror or exc} ({where}); this may "
            "pass (room freed on the disk, the disk or file system answering again): the "
            "start is given up and tried again (exit code 1, restarted by systemd)",
            path=str(where),
        )
    if isinstance(exc, FileExistsError) or (
        isinstance(exc, NotADirectoryError) and Path(where) == path
    ):
        why = "a file is in the way (a directory belongs there)"
        fix = _FIX_IN_THE_WAY
    elif isinstance(exc, NotADirectoryError):
        why = "a part of its path is a file, not a directory"
        fix = _FIX_IN_THE_WAY
    else:
        why, fix = exc.strerror or str(exc), _FIX
    return UnusablePathError(
        f"cannot {doing} the {what} {path}: {why} ({where}); {fix}",
        path=str(where),
        key="state_dir",
        expected="a directory the daemon's user can read and write",
    )


def writable_dir(directory: Path, what: str) -> None:
    """Create ``directory`` (and its parents) if need be, and check that the daemon can
    make a file in it, or raise :class:`UnusablePathError`."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unusable(what, directory, exc, "create") from exc
    probe_writable(directory, what)


def probe_writable(directory: Path, what: str) -> None:
    """Check, by making and removing a file, that the daemon can write in ``directory``
    (its mode alone does not say: a read-only file system, an ACL, another user)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise unusable(what, directory, exc, "write in") from exc
