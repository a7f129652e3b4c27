"""The lease broker's private directories, and the sweep of those dead brokers left.

Each :class:`~chworkers.clickhouse.lease.LeaseBroker` makes a 0700 directory for its Unix
socket and its slot file, and removes it when it closes. A broker whose process was
killed (SIGKILL, the OOM killer, a power cut of a container) cannot: its directory stays
in the temporary directory for good, one per kill. So the first broker a process starts
first removes the directories of dead brokers: those of this user, older than
:data:`STALE_AFTER`, whose socket nobody listens on any more (a live broker accepts a
connection at once, and forgets one that closes without a word).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable

from chworkers.sockdir import MAX_SOCKET_PATH, candidates, short_parent

__all__ = ["MAX_SOCKET_PATH", "PREFIX", "SOCKET_NAME", "private_dir", "sweep_stale"]

log = logging.getLogger(__name__)

PREFIX = "chworkers-lease-"
SOCKET_NAME = "broker.sock"
#: What the socket's path adds to its parent: "/chworkers-lease-XXXXXXXX/broker.sock".
SOCKET_ROOM = len(f"/{PREFIX}XXXXXXXX/{SOCKET_NAME}")
#: A directory younger than this is never swept: its broker may be between making it
#: and listening on its socket.
STALE_AFTER = 60.0

_swept = False
_sweep_lock = threading.Lock()


def private_dir() -> str:
    """A new 0700 directory for the socket and the slot file: in the temporary directory
    ($TMPDIR), or in the first short enough directory of
    :func:`chworkers.sockdir.candidates` when the socket's path there would be too long
    to bind (:class:`~chworkers.errors.ConfigError` when there is none). Once per
    process, dead brokers' directories are swept first (:func:`sweep_stale`)."""
    global _swept
    with _sweep_lock:
        if not _swept:
            _swept = True
            sweep_stale()
    return tempfile.mkdtemp(prefix=PREFIX, dir=short_parent(SOCKET_ROOM, "lease broker"))


def sweep_stale(parents: Iterable[str] | None = None) -> int:
    """Remove the directories dead brokers of this user left in ``parents`` (by default
    every directory :func:`private_dir` may make them in); returns how many. Never
    raises: a sweep that fails leaves files."""
    now = time.time()
    removed = 0
    if parents is None:
        parents = candidates()
    for parent in dict.fromkeys(parents):
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(PREFIX) and _is_stale(entry, now):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += not os.path.lexists(entry.path)
    if removed:
        log.info("lease: removed %d directories left by lease brokers that died", removed)
    return removed


def _is_stale(entry: os.DirEntry[str], now: float) -> bool:
    try:
        st = entry.stat(follow_symlinks=False)
        if not entry.is_dir(follow_symlinks=False) or st.st_uid != os.getuid():
            return False
    except OSError:
        return False
    if now - st.st_mtime < STALE_AFTER:
        return False
    return not _listening(os.path.join(entry.path, SOCKET_NAME))


def _listening(address: str) -> bool:
    """Whether a process accepts connections on the Unix socket ``address``; ``True``
    when that cannot be told (the directory is then left alone)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(1.0)
        sock.connect(address)
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    else:
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.close()
