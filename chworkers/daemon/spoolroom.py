"""How full the spool is, and what keeps batches out of it: its room, its trouble, its gauges.

:class:`SpoolRoom` is the part of :class:`~chworkers.daemon.spool.Spool` that measures:
the bytes on disk and reserved against the cap (the memory tier against its own), the
error for a batch that does not fit, the trouble noted when writes are refused or fail
(which ``problems()`` reports until it is history), and the stats and gauges. Every
method that reads the spool's state takes its lock, or says it is called under it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Literal

from chworkers.daemon.memorytier import MemoryTier
from chworkers.daemon.spoollinks import SpoolLinks
from chworkers.errors import SpoolFullError
from chworkers.ops.metrics import Metrics
from chworkers.wording import plural

__all__ = ["TROUBLE_FORGOTTEN_AFTER", "Policy", "SpoolRoom", "capacity_of"]

#: What a full spool does with a batch that does not fit (``[spool] policy``).
Policy = Literal["block", "reject", "drop_oldest"]

#: A write failure is reported by problems() until a write succeeds, or until nobody has
#: run into it for this long (seconds).
TROUBLE_FORGOTTEN_AFTER = 60.0


class SpoolRoom:
    """The spool's room and trouble (see the module's docstring)."""

    directory: Path
    max_bytes: int
    policy: Policy
    memory: MemoryTier
    links: SpoolLinks
    _metrics: Metrics | None
    _lock: threading.Lock
    _sizes: dict[int, int]  # seq -> file size, for every batch on disk
    _created: dict[int, float]
    _reserved: int
    # What keeps batches out right now (full, or the disk failing), for problems().
    _trouble: str | None
    _trouble_reason: str
    _trouble_since: float | None
    _trouble_last: float
    _trouble_count: int
    _waiters: int
    _memory_waiters: int  # of those, waiting for the memory tier
    _waiting_since: float | None

    def _used(self) -> int:
        return sum(self._sizes.values()) + self._reserved + self.links.pinned

    def _must_wait(self, size: int, memory: bool) -> bool:
        if memory:
            return self.memory.over(size)
        return self._used() + size > self.max_bytes and bool(self._sizes)

    def _fullness(self, memory: bool) -> str:
        if memory:
            return (
                f"spool {self.directory}: the memory for broker batches is full "
                f"({self.memory.used()} of {self.memory.max_bytes} bytes)"
            )
        return f"spool {self.directory} is full ({self._used()} of {self.max_bytes} bytes)"

    def _refused(self, size: int, memory: bool = False) -> SpoolFullError:
        """The error for a batch that does not fit, noted as the spool's trouble
        (called under the lock)."""
        message = f"{self._fullness(memory)}: a batch of {size} bytes does not fit" + (
            "" if memory else f" (policy {self.policy})"
        )
        self._note_trouble("full", message)
        if memory:
            return SpoolFullError(message, used=self.memory.used(), max_bytes=self.memory.max_bytes)
        return SpoolFullError(message, used=self._used(), max_bytes=self.max_bytes)

    def capacity(self) -> tuple[int, str]:
        """The most bytes one batch on disk could ever take, and what sets that limit:
        ``max_bytes``, or the spool's whole filesystem when it is smaller (a batch larger
        than that does not fit even with the disk empty). A push larger than this can
        never be taken (a 413, not a 503 to retry forever)."""
        return capacity_of(self.directory, self.max_bytes)

    def _clear_trouble(self) -> None:
        self._trouble = None
        self._trouble_reason = ""
        self._trouble_since = None
        self._trouble_count = 0

    def _note_trouble(self, reason: str, message: str) -> None:
        self._trouble = message
        self._trouble_reason = reason
        self._trouble_last = time.time()
        self._trouble_count += 1
        if self._trouble_since is None:
            self._trouble_since = time.time()
        if self._metrics is not None:
            self._metrics.spool_write_failures.labels(reason=reason).inc()

    def stats(self) -> dict[str, float]:
        """Batches and bytes waiting, on disk and in memory (``memory_*``: those in
        memory only), the age of the oldest, and the caps."""
        with self._lock:
            oldest = min(self._created.values(), default=None)
            kept = self.memory.oldest()
            if kept is not None:
                oldest = kept if oldest is None else min(oldest, kept)
            memory_batches, memory_bytes = self.memory.batches(), self.memory.bytes()
            return {
                "batches": len(self._sizes) + memory_batches,
                # With what links hold of files that have no other name any more.
                "bytes": sum(self._sizes.values()) + self.links.pinned + memory_bytes,
                "oldest_age_seconds": 0.0 if oldest is None else max(0.0, time.time() - oldest),
                "max_bytes": self.max_bytes,
                "memory_batches": memory_batches,
                "memory_bytes": memory_bytes,
                "memory_max_bytes": self.memory.max_bytes,
            }

    def problems(self) -> list[str]:
        """Why the spool is not taking batches right now (empty when it is fine)."""
        with self._lock:
            now = time.time()
            found: list[str] = []
            since = self._waiting_since or now
            for memory, waiters in (
                (False, self._waiters - self._memory_waiters),
                (True, self._memory_waiters),
            ):
                if waiters:
                    found.append(
                        f"{self._fullness(memory)}: {waiters} writers waiting for "
                        f"{now - since:.0f} s"
                    )
            # A failure nobody has run into again for a while (no writer tried since) is
            # history, not the spool's state.
            recent = now - self._trouble_last < TROUBLE_FORGOTTEN_AFTER
            if self._trouble is not None and self._trouble_since is not None and recent:
                what = "refusing batches" if self._trouble_reason == "full" else "writes failing"
                found.append(
                    f"spool {what} for {now - self._trouble_since:.0f} s "
                    f"({plural(self._trouble_count, 'time')}): {self._trouble}"
                )
            return found

    def publish(self) -> None:
        """Set the spool gauges (size, batches, age of the oldest) to what they are now."""
        self.links.refresh()
        if self._metrics is None:
            return
        s = self.stats()
        self._metrics.spool_batches.set(s["batches"])
        self._metrics.spool_bytes.set(s["bytes"])
        self._metrics.spool_memory_bytes.set(s["memory_bytes"])
        self._metrics.spool_oldest_age.set(s["oldest_age_seconds"])
        self._metrics.spool_max_bytes.set(self.max_bytes)


def capacity_of(directory: Path, max_bytes: int) -> tuple[int, str]:
    """What a spool in ``directory`` with this ``max_bytes`` can ever hold, and what sets
    that limit (:meth:`SpoolRoom.capacity`); the directory need not exist yet (its
    nearest existing parent's filesystem is measured)."""
    limit, what = max_bytes, "the spool's limit ([spool] max_bytes)"
    where = directory
    while not where.exists() and where.parent != where:
        where = where.parent
    try:
        fs = os.statvfs(where)
    except OSError:
        return limit, what
    # Blocks kept for root are usable by root only.
    blocks = fs.f_blocks if os.geteuid() == 0 else fs.f_blocks - (fs.f_bfree - fs.f_bavail)
    disk = blocks * fs.f_frsize
    if 0 < disk < limit:
        return disk, f"the whole filesystem of the spool ({directory})"
    return limit, what
