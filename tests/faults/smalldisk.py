"""A small filesystem for spool faults: a real tmpfs where this machine lets us mount one.

``small_filesystem(path)`` mounts an 8 MiB tmpfs on ``path`` (we run as root in the
development sandbox) and yields True, or yields False when mounting is not permitted
(CI elsewhere, or ``CHWORKERS_TEST_NO_TMPFS=1``), so that the caller falls back to a size cap (the spool's ``max_bytes``
with policy ``reject``), which fails writes the same way from the sources' side.

``disk_full(path)`` makes writes under ``path`` fail for the duration of a ``with``: on
a tmpfs by filling it up (ENOSPC), else by a file size limit of 0 bytes (RLIMIT_FSIZE,
EFBIG) for this process, so it must only wrap calls that write nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path


def _is_mountpoint(path: Path) -> bool:
    return os.path.ismount(path)


@contextlib.contextmanager
def small_filesystem(path: Path, size_mib: int = 8) -> Iterator[bool]:
    """Mount a ``size_mib`` tmpfs on ``path`` (created); yields whether it is mounted."""
    path.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    mounted = False
    wanted = not os.environ.get("CHWORKERS_TEST_NO_TMPFS")  # set to try the fallback
    if wanted and mount is not None and os.geteuid() == 0:
        result = subprocess.run(
            [mount, "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(path)],
            capture_output=True,
            timeout=30,
        )
        mounted = result.returncode == 0 and _is_mountpoint(path)
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(path: Path) -> Path:
    """Write a filler file under ``path`` until the filesystem is full; returns it."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1):  # big blocks, then the last crumbs
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def disk_full(
    path: Path, *, tmpfs: bool, room: int = 0, file: Path | None = None
) -> Iterator[None]:
    """Writes under ``path`` fail inside the block once ``room`` more bytes are written:
    on a tmpfs all but ``room`` is filled (ENOSPC); else a file size limit (EFBIG) of
    ``room`` bytes past ``file``'s end (or past 0)."""
    if tmpfs:
        filler = fill(path)
        if room:
            os.truncate(filler, max(0, filler.stat().st_size - room))
        try:
            yield
        finally:
            filler.unlink()
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    start = file.stat().st_size if file is not None else 0
    resource.setrlimit(resource.RLIMIT_FSIZE, (start + room, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
