"""The cyclic garbage collector held off while a burst of short-lived containers is made
and dropped: a broker's reply parsed into tens of thousands of lists, framed into a batch,
and freed (docs/brokers.md, "Measured").

CPython collects its youngest generation every 700 container objects allocated, and
moves what survives two collections to the oldest one, whose collections traverse the
whole heap. A reply of 10,000 stream entries is 20,000 lists that live until they are
framed: they set off some 30 collections, were traversed in each, and, promoted, brought
on full ones. That was a third of the Redis source's CPU (py-spy's samples of its thread
over 1,000,000 entries). Made and freed while the collector is off, they are never
traversed: its count of allocations goes up by them and back down as they are freed, so
no collection is due when it is on again.

Pauses nest and may overlap across threads (they share one collector): it is on again
when the last one ends, and only if it was on when the first began. Nothing that waits
belongs inside a pause: the daemon's other threads make garbage meanwhile too. A child
forked during a pause starts with the collector as it was before the pause.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused"]


class _Pauses:
    """The pauses under way, and whether the collector was on before the first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.resume = False

    def begin(self) -> None:
        with self.lock:
            if not self.depth:
                self.resume = gc.isenabled()
                gc.disable()
            self.depth += 1

    def end(self) -> None:
        with self.lock:
            self.depth -= 1
            if not self.depth and self.resume:
                gc.enable()

    def forked(self) -> None:
        """In a child forked during a pause: no pause is under way there."""
        self.lock = threading.Lock()  # another thread of the parent may have held it
        if self.depth and self.resume:
            gc.enable()
        self.depth = 0


_PAUSES = _Pauses()
os.register_at_fork(after_in_child=_PAUSES.forked)


@contextmanager
def paused() -> Iterator[None]:
    """The collector off for the block (see the module's docstring)."""
    _PAUSES.begin()
    try:
        yield
    finally:
        _PAUSES.end()
