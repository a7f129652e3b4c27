"""Resources a forked child must not keep: the daemon's lock file, listening sockets.

With ``start_method = "fork"`` a worker starts as a copy of the supervisor's process, with
every descriptor open in it. A worker that outlives a ``kill -9`` of its parent (it was
busy with an insert) would then keep the state directory's lock and the listening
sockets, and a restart would fail until it exits. An object registered here is closed
in every child right after a fork (before any other code runs there); the parent keeps
it. Objects are held weakly: closing and dropping one in the parent is enough.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import weakref
from typing import Protocol, TypeVar


class Closeable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closeable)

_PRIVATE: weakref.WeakSet[Closeable] = weakref.WeakSet()
_LOCK = threading.Lock()


def close_in_child(resource: T) -> T:
    """Close ``resource`` in any process forked from this one; returns it."""
    with _LOCK:
        _PRIVATE.add(resource)
    return resource


def _after_fork_in_child() -> None:
    # The lock may have been held by another thread of the parent at the fork: a new one.
    global _LOCK
    _LOCK = threading.Lock()
    for resource in list(_PRIVATE):
        with contextlib.suppress(Exception):
            _close(resource)
    _PRIVATE.clear()


def _close(resource: Closeable) -> None:
    if isinstance(resource, socket.socket):
        # close() waits for every makefile() object (a request handler's rfile and
        # wfile) to be closed too, which never happens in the child: close the fd now.
        fd = resource.detach()
        if fd >= 0:
            os.close(fd)
    else:
        resource.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
