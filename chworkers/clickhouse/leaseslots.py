"""The lease slots: the file every lease holder shares with the broker.

A lease is a slot: byte ``LOCK_BASE + i`` of the broker's lease file, locked by the
holding process with an open file description lock (Linux ``F_OFD_SETLK``). The kernel
decides who holds a slot, so taking and returning a lease is one system call, with no
broker in the way, and two guarantees come with it:

- one holder per slot: a capacity ``c`` means slots ``0..c-1``, so never more than
  ``c`` leases are out, across every process and thread;
- a holder that dies, even by SIGKILL, frees its slots the moment the kernel closes its
  descriptors: nothing to reclaim, no window in which a lease is lost.

The start of the same file is a table of 64-bit words, mapped by every process
(:class:`SlotTable`): the capacity, whether the broker is closed, how many requests
wait at the broker (while some do, nobody takes a slot past them), which client holds
which slot (a hint that speeds up the search; the lock is the truth) and one row of
counters per client process, written by that process alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import struct

from chworkers.errors import PoolError

__all__ = ["MAX_SESSIONS", "MAX_SLOTS", "SlotTable"]

#: The largest capacity a broker takes, and the most client processes at once.
MAX_SLOTS = 65536
MAX_SESSIONS = 16384

# Header words.
MAGIC, CAPACITY, CLOSED, WAITING, HIGH = range(5)
_HEADER = 8
_MAGIC = 0x6368776B_6C656173  # "chwklease"
# A session row: leases held now, granted and timed out in total, the process id.
HELD, GRANTED, TIMEOUTS, PID = range(4)
ROW_WORDS = 4
_OWNERS = _HEADER
_ROWS = _OWNERS + MAX_SLOTS
_WORDS = _ROWS + MAX_SESSIONS * ROW_WORDS
#: Slot ``i`` is the lock on byte ``LOCK_BASE + i`` (past the table; locks need no data).
LOCK_BASE = 1 << 40

_FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: type, whence, start, len, pid
_BUSY = (errno.EAGAIN, errno.EACCES)


def _flock(kind: int, start: int, length: int = 1) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, LOCK_BASE + start, length, 0)


class SlotTable:
    """One process's view of a lease file: its lock descriptor and the shared words.

    Each instance opens its own description, so locks taken through one table are held
    by it alone: the process that took them, until it unlocks or closes the table.
    """

    def __init__(self, path: str, *, create: bool = False) -> None:
        if not hasattr(fcntl, "F_OFD_SETLK"):  # pragma: no cover - Linux has them since 3.15
            raise PoolError("leases need open file description locks (Linux 3.15 or later)")
        self.path = path
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        self.fd = os.open(path, flags, 0o600)
        try:
            if create:
                # Every page now: a page first written later, on a full filesystem, would
                # kill the writer with SIGBUS; this fails here instead, with a clear error.
                os.posix_fallocate(self.fd, 0, _WORDS * 8)
            self._map = mmap.mmap(self.fd, _WORDS * 8)
        except BaseException:
            os.close(self.fd)
            raise
        self.words = memoryview(self._map).cast("q")
        if create:
            self.words[MAGIC] = _MAGIC
        elif self.words[MAGIC] != _MAGIC:
            self.close()
            raise PoolError(f"{path} is not a chworkers lease file")

    # -- the shared words -----------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.words[CAPACITY]

    @property
    def closed(self) -> bool:
        return self.words[CLOSED] != 0

    @property
    def waiting(self) -> int:
        return self.words[WAITING]

    @property
    def high(self) -> int:
        """One past the highest slot that may be held (above the capacity after a shrink)."""
        return self.words[HIGH]

    def owner(self, slot: int) -> int:
        return self.words[_OWNERS + slot]

    def set_owner(self, slot: int, session: int) -> None:
        self.words[_OWNERS + slot] = session

    def row(self, session: int, field: int) -> int:
        return self.words[_ROWS + session * ROW_WORDS + field]

    def add(self, session: int, field: int, delta: int) -> None:
        """Change a counter of ``session``'s row; only that session's process does."""
        self.words[_ROWS + session * ROW_WORDS + field] += delta

    def reset_row(self, session: int, pid: int = 0) -> None:
        base = _ROWS + session * ROW_WORDS
        for i in range(ROW_WORDS):
            self.words[base + i] = 0
        self.words[base + PID] = pid

    def clear_owner(self, session: int) -> None:
        """Drop ``session``'s hints (it is gone; its locks went with it)."""
        owners = self.words
        for slot in range(self.high):
            if owners[_OWNERS + slot] == session:
                owners[_OWNERS + slot] = 0

    # -- the locks ------------------------------------------------------------------------

    def try_lock(self, slot: int) -> bool:
        """Take ``slot`` for this table's description; False when someone else holds it."""
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, slot))
        except OSError as exc:
            if exc.errno in _BUSY:
                return False
            raise
        return True

    def unlock(self, slot: int) -> None:
        fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, slot))

    def any_locked(self, start: int, stop: int) -> bool:
        """Whether another description holds a slot in ``start..stop-1``."""
        if stop <= start:
            return False
        got = fcntl.fcntl(self.fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, start, stop - start))
        kind: int = struct.unpack(_FLOCK, got)[0]
        return kind != fcntl.F_UNLCK

    def count_locked(self, stop: int) -> int:
        """How many of slots ``0..stop-1`` other descriptions hold (one call per slot)."""
        return sum(1 for slot in range(stop) if self.any_locked(slot, slot + 1))

    def close(self) -> None:
        """Unmap and close; the locks this table holds are released by the kernel."""
        with contextlib.suppress(BufferError, ValueError):
            self.words.release()
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1

    def forget(self) -> None:
        """In a forked child: drop this process's reference to the parent's description
        without touching its locks (they stay the parent's)."""
        self.close()
