"""Files replaced so that a crash or a power failure leaves the old content or the new,
whole: written to a temporary name, fsync'd, renamed into place, and the rename itself
made durable by an fsync of the directory (without it, a power failure can undo the
rename while later writes that rely on it, in other files, survive).

The daemon's spool (:func:`chworkers.daemon.batchfile.write_durably`) and the embedded
endpoint's own files (its asynchronous inserts' flush files and ids, its repair of
chDB's deduplication log) share these two functions.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_directory", "replace_synced"]


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def replace_synced(path: Path, data: bytes, *, suffix: str = ".tmp") -> None:
    """``path`` holds ``data`` whole, durably, or what it held before (the temporary
    file is ``path`` + ``suffix`` beside it)."""
    tmp = path.with_name(path.name + suffix)
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)
