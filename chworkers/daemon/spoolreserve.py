"""Reserving room and a batch number in the spool, before a batch is written.

:class:`SpoolReservations` is the part of :class:`~chworkers.daemon.spool.Spool` that
hands out :class:`Reservation` s: it waits for space as the full-spool policy says
(``block``, ``reject``, ``drop_oldest``; the memory tier only ever waits), and takes
batch numbers, whose high-water mark it persists a block at a time so that no number
(and so no deduplication token) is ever used twice.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from chworkers.daemon.batchfile import write_durably
from chworkers.daemon.extents import Extent
from chworkers.daemon.spoollinks import SpoolLinks
from chworkers.daemon.spoolrecovery import SpoolRecovery
from chworkers.errors import SpoolWriteError

__all__ = ["LOG_EVERY", "SEQ_BLOCK", "Reservation", "SpoolReservations"]

#: The spool's logger, as before it was cut into modules (log filters keep working).
log = logging.getLogger("chworkers.daemon.spool")

#: Batch numbers are reserved (and the reservation persisted) this many at a time.
SEQ_BLOCK = 1024

#: How often a writer blocked on a full spool checks whether it should give up.
_GIVE_UP_POLL = 0.2
#: Writers waiting on a full spool are logged at most this often (seconds).
LOG_EVERY = 30.0


@dataclasses.dataclass(frozen=True)
class Reservation:
    """Space and a batch number held for one batch until it is written or released."""

    seq: int
    size: int
    #: For the memory tier (a broker's batch, :mod:`~chworkers.daemon.memorytier`).
    memory: bool = False


class SpoolReservations(SpoolRecovery):
    """The spool's reservations (see the module's docstring)."""

    _space: threading.Condition
    links: SpoolLinks
    _by_ref: dict[int, tuple[Extent, ...]]
    _closed: bool
    _seq_ceiling: int
    _waiting_logged: float

    def reserve(
        self,
        size: int,
        *,
        timeout: float | None = None,
        give_up: Callable[[], bool] | None = None,
        on_wait: Callable[[], None] | None = None,
        memory: bool = False,
    ) -> Reservation:
        """Reserve ``size`` bytes and a batch number, waiting for space as the policy says.

        A blocked wait ends with :class:`SpoolFullError` after ``timeout``, when the spool
        is closed, or as soon as ``give_up()`` says so (checked a few times a second), so a
        caller whose records were withdrawn meanwhile does not wait for nothing;
        ``on_wait()`` is called once when the wait begins (under the spool's lock: it
        must not call the spool). The reservation is :meth:`write` n or :meth:`release` d.
        ``memory``: for the memory tier, which only ever waits (whatever the policy).
        """
        dropped: list[tuple[int, tuple[Extent, ...]]] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            waiting = False
            try:
                while self._must_wait(size, memory):
                    if memory:
                        pass  # a broker's batch waits: its entries wait in the broker
                    elif self.policy == "drop_oldest":
                        victim = min(self._sizes)
                        self._sizes.pop(victim)
                        self._created.pop(victim, None)
                        dropped.append((victim, self._by_ref.pop(victim, ())))
                        continue
                    elif self.policy == "reject":
                        raise self._refused(size)
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if (
                        (remaining is not None and remaining <= 0)
                        or self._closed
                        or (give_up is not None and give_up())
                    ):
                        raise self._refused(size, memory)
                    if not waiting:
                        waiting = True
                        self._waiters += 1
                        self._memory_waiters += memory
                        if on_wait is not None:
                            on_wait()
                        if self._waiting_since is None:
                            self._waiting_since = time.time()
                        if time.monotonic() - self._waiting_logged >= LOG_EVERY:
                            self._waiting_logged = time.monotonic()
                            log.warning(
                                "%s: writers wait for ClickHouse to take batches",
                                self._fullness(memory),
                            )
                    slice_ = _GIVE_UP_POLL if remaining is None else min(remaining, _GIVE_UP_POLL)
                    self._space.wait(slice_)
            finally:
                if waiting:
                    self._waiters -= 1
                    self._memory_waiters -= memory
                    if not self._waiters and self._waiting_since is not None:
                        log.debug(
                            "spool %s: writers waited %.1f s for space",
                            self.directory,
                            time.time() - self._waiting_since,
                        )
                        self._waiting_since = None
            seq = self._take_seq_locked()
            if memory:
                self.memory.reserve(size)
            else:
                self._reserved += size
        for victim, refs in dropped:
            (self.directory / f"{victim:020d}.batch").unlink(missing_ok=True)
            self.links.detach(victim, refs)
            log.warning("spool full: dropped the oldest batch %d (policy drop_oldest)", victim)
            if self._metrics is not None:
                self._metrics.spool_dropped.inc()
        return Reservation(seq, size, memory)

    def _take_seq_locked(self) -> int:
        """The next batch number (under the lock)."""
        seq = self._next_seq
        if seq + 1 >= self._seq_ceiling:
            # Rare (once per SEQ_BLOCK batches), so done under the lock: numbers must
            # be durable before they are handed out. If the write fails, the number is
            # not handed out (it is not covered by the file on disk).
            ceiling = seq + 1 + SEQ_BLOCK
            try:
                write_durably(self._seq_file, str(ceiling).encode(), fsync=self.fsync)
            except SpoolWriteError as exc:
                self._note_trouble("io", str(exc))
                raise
            self._seq_ceiling = ceiling
        self._next_seq = seq + 1
        return seq

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation that will not be written."""
        with self._lock:
            if reservation.memory:
                self.memory.unreserve(reservation.size)
            else:
                self._reserved -= reservation.size
            self._space.notify_all()

    def wait_for_room(self, timeout: float) -> bool:
        """Sleep up to ``timeout``; True when woken early because space was freed."""
        with self._lock:
            return self._space.wait(timeout)
