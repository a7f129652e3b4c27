"""Large task buffers handed to workers through shared memory instead of the task pipe.

A batch of tens of megabytes crosses a pipe one pipe-full (64 KiB) at a time, each a
wake-up of the supervisor's loop and of the worker: on a busy machine a 54 MB
``insert_raw`` spent longer in the pipe than in its POST. A buffer of
:data:`THRESHOLD` bytes or more is instead copied once, in the producer's thread, into an
anonymous memory file (``memfd_create``) that the task holds; the task message carries
a :class:`SharedRef` (supervisor pid, descriptor, the file's unique name, size) and the
worker maps the file read-only through ``/proc/<pid>/fd/<fd>``.

The file lives as long as the supervisor's task does (re-dispatches after a worker crash
map it again) and is freed with it: nothing is left behind when the supervisor is
killed, and a worker forked while it exists closes its inherited copy. A worker checks that the descriptor it opened is the file named in the reference
(a descriptor number may be reused once a task is gone). Where this cannot work (not
Linux, no ``/proc``, a process that other processes of its user may not inspect),
:func:`share` returns None and the buffer goes through the pipe as before.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import mmap
import os
import secrets
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chworkers import forkguard
from chworkers.errors import SerializationError

__all__ = ["THRESHOLD", "SharedBuffer", "SharedRef", "resolve", "share"]

log = logging.getLogger(__name__)

#: Buffers from this size on travel through shared memory.
THRESHOLD = 1 << 20

_PR_GET_DUMPABLE = 3
_ids = itertools.count(1)
_usable: dict[int, bool] = {}  # by pid: forks decide again


def usable() -> bool:
    """Whether workers of this process can map its memory files: Linux's
    ``memfd_create``, ``/proc``, and a process that is dumpable (else ``/proc/<pid>/fd``
    is closed to other processes, even of the same user)."""
    pid = os.getpid()
    known = _usable.get(pid)
    if known is None:
        known = _usable[pid] = _check()
    return known


def _check() -> bool:
    if not hasattr(os, "memfd_create") or not os.path.isdir(f"/proc/{os.getpid()}/fd"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        dumpable = libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        return False
    if dumpable != 1:
        log.info("this process is not dumpable: large batches go to workers through pipes")
        return False
    return True


@dataclass(frozen=True, slots=True)
class SharedRef:
    """What a worker needs to map a :class:`SharedBuffer` (pickled into the task message)."""

    pid: int
    fd: int
    name: str
    size: int

    def open(self) -> memoryview:
        """The buffer, mapped read-only; :class:`SerializationError` when it cannot be."""
        path = f"/proc/{self.pid}/fd/{self.fd}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SerializationError(
                f"cannot open the task's shared buffer {path}: {exc}",
                what="batch",
                error_type=type(exc).__name__,
            ) from exc
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
            if opened != f"/memfd:{self.name} (deleted)" or os.fstat(fd).st_size != self.size:
                raise SerializationError(
                    f"{path} is no longer the task's shared buffer {self.name} (it is {opened})",
                    what="batch",
                    error_type="stale",
                )
            if self.size == 0:
                return memoryview(b"")
            return memoryview(mmap.mmap(fd, self.size, prot=mmap.PROT_READ))
        finally:
            os.close(fd)


class SharedBuffer:
    """A read-only copy of a buffer in an anonymous memory file, closed with this object."""

    __slots__ = ("__weakref__", "_finalizer", "ref")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        name = f"chworkers-{os.getpid()}-{next(_ids)}-{secrets.token_hex(4)}"
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self._finalizer = weakref.finalize(self, os.close, fd)
        try:
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
        except BaseException:
            self._finalizer()
            raise
        self.ref = SharedRef(os.getpid(), fd, name, len(view))
        # A worker forked now would keep the file (and its memory) for its whole life.
        forkguard.close_in_child(self)

    def close(self) -> None:
        self._finalizer()

    def __repr__(self) -> str:
        return f"<SharedBuffer {self.ref.name}, {self.ref.size} bytes>"


def share(buffers: Sequence[Any]) -> list[SharedBuffer | None] | None:
    """Shared copies of the large ones among ``buffers`` (None for the others), or None
    when none is large or shared memory cannot be used here."""
    if not any(memoryview(b).nbytes >= THRESHOLD for b in buffers) or not usable():
        return None
    try:
        return [SharedBuffer(b) if memoryview(b).nbytes >= THRESHOLD else None for b in buffers]
    except OSError as exc:  # the pipe still works
        if exc.errno in (errno.EPERM, errno.ENOSYS, errno.EACCES):  # e.g. a seccomp filter
            _usable[os.getpid()] = False
            log.warning("no memory files here (%s): large batches go through pipes", exc)
        else:  # e.g. out of memory for this file
            log.warning("cannot put a batch in shared memory (%s): it goes through the pipe", exc)
        return None


def resolve(buffers: Sequence[Any]) -> list[Any]:
    """``buffers`` as received by a worker, with shared ones mapped."""
    return [b.open() if isinstance(b, SharedRef) else b for b in buffers]
