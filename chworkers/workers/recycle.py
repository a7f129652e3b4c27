"""Recycling a worker by memory: read its RSS cheaply, between tasks, at a bounded rate.

A worker whose resident memory grows (a leaking library, caches that never shrink) is
replaced before the machine runs short: with ``max_worker_memory`` set, the worker reads
its RSS after a task and, once over the limit, stops taking tasks there, after the task
that just finished and before the next. The supervisor hands the tasks it had been sent
but had not started to other workers (they never ran, so nothing runs twice) and starts
a replacement at once, as for ``max_tasks_per_worker``.

Why the worker and not the supervisor's loop: the worker knows when a task has ended,
so "finish the current task, then go" needs no message round trip, during which it
would start the next task (or several: it holds up to ``prefetch``) with its memory
already over. Reading ``/proc/self/statm`` with ``pread`` on a descriptor kept open costs
~2.5 us; it is read after a task that ran 1 ms or more (the read is then under 0.3% of
the task) and otherwise at most every 10 ms, so a stream of tiny tasks pays nothing
measurable. Without ``/proc`` (not Linux) there is no recycling by memory; the worker
says so once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: A task that ran this long is followed by a read; quicker ones share one read per
#: ``_EVERY``.
_AFTER_TASK = 0.001
_EVERY = 0.01
#: Without a limit, the RSS is still read (for the memory gauge), this often.
_GAUGE_EVERY = 1.0


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


class MemoryWatch:
    """The worker's own RSS, read from ``/proc/self/statm``; :meth:`over` says when it
    passed the limit."""

    def __init__(self, name: str, on_read: Callable[[int], None] | None = None) -> None:
        self.name = name
        self.on_read = on_read
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.last_read = 0.0
        self.rss: int | None = None
        self._fd: int | None = None
        self._refused: int | None = None  # a limit below a fresh worker's RSS
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.info("%s: cannot read its memory (%s): no recycling by memory", name, exc)
        #: The RSS once booted: a limit below it would replace workers after every task.
        self.baseline = self.read()

    def read(self) -> int | None:
        """The RSS in bytes now (None without ``/proc``)."""
        if self._fd is None:
            return None
        try:
            fields = os.pread(self._fd, 128, 0).split()
            rss = self.rss = int(fields[1]) * self.page
        except (OSError, IndexError, ValueError):
            return None
        if self.on_read is not None:
            self.on_read(rss)
        return rss

    def due(self, now: float, duration: float, limit: int | None) -> bool:
        """Whether to read after a task that took ``duration`` seconds."""
        if limit is None:
            return now - self.last_read >= _GAUGE_EVERY
        return duration >= _AFTER_TASK or now - self.last_read >= _EVERY

    def over(self, limit: int | None, duration: float) -> str | None:
        """After a task: why the worker should be replaced now (its RSS and the limit),
        or None. Reads at the bounded rate described in the module."""
        now = time.monotonic()
        if self._fd is None or not self.due(now, duration, limit):
            return None
        self.last_read = now
        rss = self.read()
        if rss is None or limit is None or rss <= limit:
            return None
        if self.baseline is not None and self.baseline >= limit:
            if self._refused != limit:
                self._refused = limit
                log.error(
                    "%s: max_worker_memory (%s) is below the RSS of a worker that has run "
                    "nothing (%s): not recycling by memory, which would replace workers "
                    "after every task; raise it",
                    self.name,
                    mib(limit),
                    mib(self.baseline),
                )
            return None
        return f"RSS {mib(rss)} is over max_worker_memory ({mib(limit)})"

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
