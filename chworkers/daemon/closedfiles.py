"""Followed files closed to save descriptors: how many may be open, which to close, and
what became of one closed (the part of :mod:`chworkers.daemon.tailing` that holds no
descriptor: a ``stat``, a directory listing)."""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import resource
from collections.abc import Mapping
from typing import NamedTuple

from chworkers.daemon.framing import Framer

__all__ = [
    "RESERVED_DESCRIPTORS",
    "Change",
    "Finished",
    "Parked",
    "change_of",
    "find_moved",
    "fit_open_files",
    "raise_open_files_limit",
    "still_finished",
    "to_park",
]

#: The sources' logger, as before they were cut into modules (log filters keep working).
log = logging.getLogger("chworkers.daemon.sources")

#: Descriptors left to the daemon's own use (spool and dead-letter files, sockets, pipes
#: to its workers, ClickHouse connections) when the file sources' ``max_open_files`` are
#: fitted within its ``ulimit -n`` (:func:`fit_open_files`).
RESERVED_DESCRIPTORS = 64

#: The most a daemon raises its soft ``RLIMIT_NOFILE`` to when its hard limit is
#: unlimited (Linux's default ``fs.nr_open``).
NOFILE_CEILING = 1 << 20


@dataclasses.dataclass
class Parked:
    """A followed file closed to save a descriptor: where it was, to reopen it there."""

    path: str
    dev: int
    ino: int
    offset: int
    framer: Framer
    head: int
    head_len: int
    #: Where it is now when its path names another file (rotated away; None: its path).
    at: str | None = None


class Finished(NamedTuple):
    """A file a source read to its end and is done with (rotated away, or read once)."""

    head: int  # its fingerprint: the crc32 of its first head_len bytes
    head_len: int
    end: int  # where it was read to
    mtime_ns: int  # its modification time then


def still_finished(finished: Finished, st: os.stat_result) -> bool:
    """Whether a finished file, by its ``stat`` (at the same inode), is as it was when
    finished: not written to since (the same size and modification time), and so need
    not be opened (a new file that took the inode of a deleted one is written to)."""
    return st.st_size == finished.end and st.st_mtime_ns == finished.mtime_ns


class Change(enum.Enum):
    """What became of a parked file since it was closed."""

    NONE = "none"  # the same file, the same size
    GREW = "grew"  # the same file, another size (grown, or truncated: reopening tells)
    ELSEWHERE = "elsewhere"  # its path names another file or none
    UNKNOWN = "unknown"  # its path cannot be looked at now (EACCES, EIO): left as it is


def change_of(parked: Parked, st: os.stat_result | None = None) -> Change:
    """Look at a parked file's path (one ``stat``, no descriptor; ``st``: its ``stat``
    made already this poll)."""
    if st is None:
        try:
            st = os.stat(parked.path)
        except FileNotFoundError:
            return Change.ELSEWHERE
        except OSError:
            return Change.UNKNOWN
    if (st.st_dev, st.st_ino) != (parked.dev, parked.ino):
        return Change.ELSEWHERE
    return Change.NONE if st.st_size == parked.offset else Change.GREW


def find_moved(path: str, dev: int, ino: int) -> str | None:
    """Where the file once at ``path`` (device ``dev``, inode ``ino``) is now, when it
    was renamed within the same directory (logrotate's ``rename``, ``olddir`` aside);
    None when it is not there (deleted, or moved elsewhere)."""
    directory = os.path.dirname(path) or "."
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.inode() != ino:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev == dev and entry.is_file(follow_symlinks=False):
                    return entry.path
    except OSError:
        return None
    return None


def to_park(
    grew_at: Mapping[str, float],
    *,
    wanting: int,
    limit: int,
    idle_after: float,
    now: float,
) -> list[str]:
    """The open files to close now: those idle for ``idle_after`` seconds (0: never for
    idleness), then, while ``wanting`` files wait for a descriptor beyond the ``limit``,
    the ones that grew least recently. ``grew_at``: the open files' last growth (a
    monotonic time), each read to its end."""
    park = [p for p, at in grew_at.items() if idle_after > 0 and now - at >= idle_after]
    idle = set(park)
    left = sorted((at, p) for p, at in grew_at.items() if p not in idle)
    short = len(left) + wanting - limit
    park += [p for _, p in left[: max(0, short)]]
    return park


def raise_open_files_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` (``ulimit -n``) to its hard one
    (``ulimit -Hn``, systemd's ``LimitNOFILE=``), as a daemon that polls rather than
    ``select()``s may: systemd's default soft limit is 1,024 under a hard one of 524,288,
    and the soft one alone would make file sources take turns for descriptors. The soft
    limit then (as it was when the system refuses)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.info("could not raise the open files limit (ulimit -n %d) to %d: %s", soft, target, exc)
        return soft
    log.info("open files limit (ulimit -n) raised from %d to %d, the hard limit", soft, target)
    return target


def fit_open_files(wanted: Mapping[str, int], soft_limit: int | None = None) -> dict[str, int]:
    """Each file source's ``max_open_files`` (``wanted``, by pipeline), lowered in
    proportion when together they would leave the daemon fewer than
    :data:`RESERVED_DESCRIPTORS` of its soft ``RLIMIT_NOFILE`` (``soft_limit``; when None,
    the process's, raised to its hard limit first: :func:`raise_open_files_limit`), with
    a warning: better files taking turns than opens that fail with "Too many open files"
    and take the daemon's own descriptors with them."""
    if soft_limit is None:
        soft_limit = raise_open_files_limit()
    total = sum(wanted.values())
    if soft_limit == resource.RLIM_INFINITY or total + RESERVED_DESCRIPTORS <= soft_limit:
        return dict(wanted)
    room = max(len(wanted), soft_limit - RESERVED_DESCRIPTORS)
    fitted = {name: max(1, n * room // total) for name, n in wanted.items()}
    log.warning(
        "file sources: max_open_files add up to %d, more than ulimit -n (%d) leaves them "
        "beside the daemon's own %d descriptors; lowered to %s (raise LimitNOFILE or "
        "the hard ulimit -n, or lower max_open_files)",
        total,
        soft_limit,
        RESERVED_DESCRIPTORS,
        ", ".join(f"{name}: {n}" for name, n in fitted.items()),
    )
    return fitted
