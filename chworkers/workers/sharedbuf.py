"""Large task buffers handed to workers through shared memory instead of the task pipe.

A batch of tens of megabytes crosses a pipe one pipe-full at a time, each a wake-up of
the supervisor's loop and of the worker: on a busy machine a 54 MB ``insert_raw`` spent
longer in the pipe than in its POST. A buffer of :data:`THRESHOLD` bytes or more is
instead copied once, in the producer's thread, into an anonymous memory file
(``memfd_create``) that the task holds; the task message carries a :class:`SharedRef`
(supervisor pid, descriptor, the file's unique name, size, a tag) and the worker maps the
file read-only through ``/proc/<pid>/fd/<fd>``.

The file lives as long as the supervisor's task does (re-dispatches after a worker crash
map it again). Then it is kept for a later batch, for :data:`POOL_IDLE` seconds and up
to a number of bytes that :func:`configure` sets (``[supervisor]
kept_memory_files_bytes``; by default 1/16 of the cgroup's memory limit, at most
:data:`POOL_BYTES`): writing into a fresh file costs its pages' allocation and zeroing,
about three times the copy itself (a 56 MB batch: ~85 ms instead of ~25 ms on the
2-core development machine), but kept pages are the supervisor's memory, charged to its
cgroup (under systemd's ``MemoryMax=``, real memory that the OOM killer counts). Nothing is left behind when the supervisor is killed
(the files are anonymous), and a worker forked while one exists closes its inherited
copy. A worker checks that the descriptor it opened is the file named in the reference
(a descriptor number may be reused once a file is closed) and that the tag written after
the batch is the reference's (a kept file carries another task's batch next, and its
tag is wiped as soon as a task gives it back). Where this cannot work (not Linux, no
``/proc``, a process that other processes of its user may not inspect), :func:`share`
returns None and the buffer goes through the pipe as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import logging
import mmap
import os
import secrets
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chworkers import forkguard
from chworkers.errors import SerializationError
from chworkers.ops import cgroup

__all__ = [
    "THRESHOLD",
    "SharedBuffer",
    "SharedRef",
    "SharedView",
    "configure",
    "default_keep",
    "kept_bytes",
    "kept_limit",
    "resolve",
    "share",
]

log = logging.getLogger(__name__)

#: Buffers from this size on travel through shared memory.
THRESHOLD = 1 << 20
#: Memory files kept for later batches once their task is done: at most this many bytes
#: by default (their pages stay allocated: the supervisor's memory includes them): what
#: a burst of four 2M-row ``insert_raw`` requests (58 MB each) holds at once; at 128 MiB
#: the third of three such requests took a fresh file every time (~33 ms of the
#: producer's CPU instead of ~7, and its pages freed again when it was done) ...
POOL_BYTES = 256 << 20
#: ... and at most this fraction of the cgroup's memory limit, by default ...
POOL_SHARE = 16
#: ... and for this many seconds (see :func:`sweep`).
POOL_IDLE = 30.0
_TAG = 16  # bytes of the tag written after a batch
_MARK = 1  # and then of the mark that it was sent in part (see SharedView)

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
    tag: bytes = b""

    def open(self) -> memoryview:
        """The buffer, mapped read-only (a view of a :class:`SharedView`, through which it
        can also be sent from the file itself); :class:`SerializationError` when it cannot
        be."""
        path = f"/proc/{self.pid}/fd/{self.fd}"
        try:
            try:  # writable for SharedView's mark only (past the buffer and its tag)
                fd, marks = os.open(path, os.O_RDWR | os.O_CLOEXEC), True
            except PermissionError:  # then it is never sent from the file
                fd, marks = os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
        except OSError as exc:
            raise SerializationError(
                f"cannot open the task's shared buffer {path}: {exc}",
                what="batch",
                error_type=type(exc).__name__,
            ) from exc
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
            stale = None
            if opened != f"/memfd:{self.name} (deleted)":
                stale = f"it is {opened}"
            elif os.pread(fd, len(self.tag), self.size) != self.tag:
                stale = "its task is done"
            if stale is not None:
                raise SerializationError(
                    f"{path} is no longer the task's shared buffer {self.name} ({stale})",
                    what="batch",
                    error_type="stale",
                )
            if self.size == 0:
                os.close(fd)
                return memoryview(b"")
            mark = self.size + len(self.tag) if marks else None
            return memoryview(SharedView.of(fd, self.size, mark))
        except BaseException:
            os.close(fd)
            raise


class SharedView(mmap.mmap):
    """A task's shared buffer as a worker maps it (read-only), with its file: a sender may
    hand the kernel the file instead of the mapped pages (``socket.sendfile``: the pages
    are neither faulted into the worker nor copied by it).

    Such a send passes the pages themselves, not a copy of them: until the server has
    read them, a socket still refers to them, and a request that did not end in a whole
    answer (a timeout, a reset, a killed worker) can leave one that does, its bytes read
    by the server later (on one host, a socket's unread data is those very pages). Then
    the file must never carry another batch. So a file sent this way is marked first
    (:meth:`sending`, a byte past the buffer and its tag) and unmarked only by a whole
    answer to a send that no failed one preceded, by this worker or another
    (:meth:`sent`); the supervisor closes a file it finds marked instead of keeping it
    for a later batch (:func:`_give_back`). Whatever fails in between (the worker's
    death included) leaves the mark: the cost is a fresh file, never a batch's bytes
    changed under a request still in flight."""

    _fd: int
    _mark: int | None
    _clean: bool | None

    @classmethod
    def of(cls, fd: int, size: int, mark: int | None) -> SharedView:
        """``size`` bytes of the file ``fd`` (owned from now on: closed with the view),
        marked at offset ``mark`` while sent from the file (None: ``fd`` is read-only,
        and the file is never sent from)."""
        view = cls(fd, size, prot=mmap.PROT_READ)
        view._fd, view._mark, view._clean = fd, mark, None
        weakref.finalize(view, os.close, fd)
        return view

    def fileno(self) -> int:
        """The file's descriptor (its first ``len(self)`` bytes are the buffer)."""
        return self._fd

    def sending(self) -> bool:
        """Mark the file before it is sent from; False when it cannot be marked (then
        send the mapped bytes instead: a copy, which nothing can change)."""
        if self._mark is None:
            return False
        try:
            if self._clean is None:  # its first send here: marked already if one failed
                self._clean = os.pread(self._fd, 1, self._mark) == b"\0"
            os.pwrite(self._fd, b"\1", self._mark)
        except OSError as exc:
            log.debug("shared buffer not sent from its file: %s", exc)
            return False
        return True

    def sent(self, whole: bool) -> None:
        """After a send from the file: ``whole`` when it ended in the server's whole
        answer (so the server has read every byte of it)."""
        if not whole:
            self._clean = False
        elif self._clean and self._mark is not None:
            with contextlib.suppress(OSError):  # still marked: only a fresh file then
                os.pwrite(self._fd, b"\0", self._mark)


class _File:
    """One anonymous memory file of this process (closed with this object).

    Once kept for a later batch it is also mapped here, writable (:meth:`keep`): the next
    batch is copied into its pages with a plain memory copy, about half the CPU of
    ``pwrite`` into pages it already has (a 58 MB batch: ~9 ms instead of ~19 on the
    2-core development machine), which the producer pays before every large task."""

    __slots__ = (
        "__weakref__",
        "_finalizer",
        "_maps",
        "capacity",
        "fd",
        "idle_since",
        "name",
        "pid",
    )

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.name = f"chworkers-{self.pid}-{next(_ids)}-{secrets.token_hex(4)}"
        self.fd = os.memfd_create(self.name, os.MFD_CLOEXEC)
        self._maps: list[mmap.mmap] = []  # at most one: the file's pages, writable
        self._finalizer = weakref.finalize(self, _close_file, self.fd, self._maps)
        self.capacity = 0
        self.idle_since = 0.0
        # A worker forked now would keep the file (and its memory) for its whole life.
        forkguard.close_in_child(self)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        self._finalizer()

    def write(self, view: memoryview, tag: bytes) -> None:
        """``view`` from the file's start, then ``tag`` right after it."""
        size = len(view)
        end = size + len(tag)
        mapped = self._maps[0] if self._maps else None
        if mapped is not None and len(mapped) >= end:
            mapped[:size] = view
            mapped[size:end] = tag
            return
        done = 0
        while done < size:  # new pages: allocated by the kernel as it writes them
            done += os.pwrite(self.fd, view[done:], done)
        os.pwrite(self.fd, tag, size)
        self.capacity = max(self.capacity, end)

    def keep(self) -> None:
        """Map the whole file, writable, for the next batch (once per size it reaches:
        the pages are mapped at once, not one fault at a time while the batch is copied);
        a file that cannot be mapped is written with ``pwrite`` still."""
        if self._maps and len(self._maps[0]) >= self.capacity:
            return
        for old in self._maps:
            old.close()
        self._maps.clear()
        if self.capacity <= 0:
            return
        try:
            self._maps.append(mmap.mmap(self.fd, self.capacity, flags=mmap.MAP_SHARED | _POPULATE))
        except (OSError, ValueError) as exc:
            log.debug("memory file %s not mapped: %s", self.name, exc)


#: Map a kept file's pages at once (Linux).
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _close_file(fd: int, maps: list[mmap.mmap]) -> None:
    for mapped in maps:
        mapped.close()
    maps.clear()
    os.close(fd)


class _Pool:
    """The memory files of tasks that are done, kept for later batches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[_File] = []
        self.limit: int | None = None  # bytes kept at most; None: default_keep(), on use

    def current_limit(self) -> int:
        limit = self.limit
        if limit is None:
            self.limit = limit = default_keep()
        return limit

    def set_limit(self, limit: int) -> None:
        """Keep at most ``limit`` bytes from now on (the largest kept files beyond it are
        closed at once)."""
        with self._lock:
            self.limit = limit
            out: list[_File] = []
            self._free.sort(key=lambda f: f.capacity)
            while self._free and sum(f.capacity for f in self._free) > limit:
                out.append(self._free.pop())
        for f in out:
            f.close()

    def kept(self) -> int:
        with self._lock:
            return sum(f.capacity for f in self._free)

    def take(self, size: int) -> _File:
        """The smallest kept file that holds ``size`` bytes, else the largest (it grows:
        only its new pages are allocated), else a new one."""
        now = time.monotonic()
        with self._lock:
            stale = self._expire(now)
            fits = [f for f in self._free if f.capacity >= size]
            found = None
            if fits:
                found = min(fits, key=lambda f: f.capacity)
            elif self._free:
                found = max(self._free, key=lambda f: f.capacity)
            if found is not None:
                self._free.remove(found)
        for f in stale:
            f.close()
        return found if found is not None else _File()

    def give(self, f: _File) -> None:
        """Keep ``f`` for a later batch, or close it (over the limit)."""
        if f.pid == os.getpid() and not f.closed:
            f.keep()  # outside the lock: mapping a large file takes a few milliseconds
        now = time.monotonic()
        with self._lock:
            out = self._expire(now)
            kept = sum(k.capacity for k in self._free)
            if f.pid == os.getpid() and not f.closed and kept + f.capacity <= self.current_limit():
                f.idle_since = now
                self._free.append(f)
            else:
                out.append(f)
        for stale in out:
            stale.close()

    def sweep(self, idle: float) -> None:
        """Close the files kept for more than ``idle`` seconds."""
        with self._lock:
            stale = self._expire(time.monotonic(), idle)
        for f in stale:
            f.close()

    def _expire(self, now: float, idle: float | None = None) -> list[_File]:
        pid = os.getpid()
        idle = POOL_IDLE if idle is None else idle
        stale = [f for f in self._free if now - f.idle_since > idle or f.pid != pid]
        if stale:
            self._free = [f for f in self._free if f not in stale]
        return stale

    def __len__(self) -> int:
        return len(self._free)


_POOL = _Pool()


class SharedBuffer:
    """A read-only copy of a buffer in an anonymous memory file, which goes back to the
    process's kept files (or is closed) with this object."""

    __slots__ = ("__weakref__", "_finalizer", "ref")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        size = len(view)
        f = _POOL.take(size + _TAG + _MARK)
        tag = secrets.token_bytes(_TAG)
        try:
            f.write(view, tag + bytes(_MARK))
        except BaseException:
            f.close()
            raise
        self._finalizer = weakref.finalize(self, _give_back, f, size)
        self.ref = SharedRef(os.getpid(), f.fd, f.name, size, tag)

    def close(self) -> None:
        self._finalizer()

    def __repr__(self) -> str:
        return f"<SharedBuffer {self.ref.name}, {self.ref.size} bytes>"


def _give_back(f: _File, size: int) -> None:
    """The task is done: wipe its tag (a reference to it no longer maps) and keep the file,
    unless a worker marked it as sent in part (see :class:`SharedView`): then a socket
    may still refer to its pages, and it is closed instead."""
    if f.closed or f.pid != os.getpid():
        return  # closed in a forked child
    try:
        marked = os.pread(f.fd, _MARK, size + _TAG) != bytes(_MARK)
        if not marked:
            os.pwrite(f.fd, bytes(_TAG), size)
    except OSError:
        marked = True
    if marked:
        f.close()
        return
    _POOL.give(f)


def default_keep() -> int:
    """Bytes of memory files kept by default: 1/:data:`POOL_SHARE` of the memory limit
    of this process's cgroup when one is set, at most :data:`POOL_BYTES`."""
    limit = cgroup.memory_limit()
    return POOL_BYTES if limit is None else min(POOL_BYTES, limit // POOL_SHARE)


def configure(keep_bytes: int | None) -> int:
    """Keep at most ``keep_bytes`` of memory files for later batches (None: the
    default, :func:`default_keep`; 0: none); returns the limit now in force. The limit is
    the process's: the last supervisor configured sets it for all."""
    limit = default_keep() if keep_bytes is None else keep_bytes
    _POOL.set_limit(limit)
    return limit


def kept_bytes() -> int:
    """Bytes of memory files kept now for later batches."""
    return _POOL.kept()


def kept_limit() -> int:
    """The most bytes of memory files kept for later batches (what :func:`configure`
    set, else the default)."""
    return _POOL.current_limit()


def sweep(idle: float | None = None) -> None:
    """Close the memory files kept for more than ``idle`` seconds (by default
    :data:`POOL_IDLE`; 0: all of them). The supervisor's loop calls it now and then, and
    with 0 when it ends."""
    _POOL.sweep(POOL_IDLE if idle is None else idle)


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
