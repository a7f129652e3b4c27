"""Where Unix sockets go: a directory whose path leaves room for the socket's name.

A Unix socket's path holds at most :data:`MAX_SOCKET_PATH` bytes (``sun_path`` less its
terminating NUL, on Linux); binding a longer one fails with ``OSError: AF_UNIX path too
long``. chworkers binds two kinds of socket in the temporary directory: the lease
broker's (:mod:`chworkers.clickhouse.leasedirs`) and the workers' fork server's
(:mod:`chworkers.workers.forkserver`). A long ``$TMPDIR`` (a CI runner's per-job
directory, pytest's numbered ones, a container's deep mount) must not stop the daemon:
:func:`short_parent` picks the first of ``$TMPDIR``, ``$XDG_RUNTIME_DIR``, ``/tmp``,
``/var/tmp`` and ``/dev/shm`` that is a writable directory short enough, and raises a
:class:`~chworkers.errors.ConfigError` that says what to do when none is.
"""

from __future__ import annotations

import logging
import os
import tempfile

from chworkers.errors import ConfigError

__all__ = ["MAX_SOCKET_PATH", "candidates", "short_parent"]

log = logging.getLogger(__name__)

#: Longest Unix socket path (``sun_path`` less its terminating NUL, on Linux).
MAX_SOCKET_PATH = 107

#: Where a socket may go when the temporary directory is too long, in order.
FALLBACKS = ("/tmp", "/var/tmp", "/dev/shm")

_warned: set[str] = set()


def candidates() -> list[str]:
    """The directories tried, in order: the temporary directory (``$TMPDIR``), then
    ``$XDG_RUNTIME_DIR`` (private to the user, where set), then :data:`FALLBACKS`."""
    found = [tempfile.gettempdir()]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        found.append(runtime)
    found.extend(FALLBACKS)
    return list(dict.fromkeys(found))


def short_parent(room: int, what: str) -> str:
    """A writable directory under which a socket path of ``room`` more bytes (its
    subdirectories, separators and name) fits: the temporary directory when it is short
    enough, else the first fitting one of :func:`candidates` (logged once per
    directory, at INFO, naming ``what`` moved). Raises :class:`ConfigError` when none
    fits."""
    tried = candidates()
    for parent in tried:
        if len(os.fsencode(parent)) + room > MAX_SOCKET_PATH:
            continue
        if not (os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)):
            continue
        if parent != tried[0] and parent not in _warned:
            _warned.add(parent)
            log.info(
                "%s: the temporary directory %s is too long a path for a Unix socket "
                "(%d bytes at most); using %s",
                what,
                tried[0],
                MAX_SOCKET_PATH,
                parent,
            )
        return parent
    raise ConfigError(
        f"{what}: no directory to put a Unix socket in: a socket path holds at most "
        f"{MAX_SOCKET_PATH} bytes, and none of {', '.join(tried)} is a writable directory "
        f"{MAX_SOCKET_PATH - room} bytes long or shorter; set TMPDIR to a shorter one",
        key="TMPDIR",
        value=tried[0],
        expected=f"a writable directory of at most {MAX_SOCKET_PATH - room} bytes",
        source="environment",
    )
