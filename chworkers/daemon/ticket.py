"""A producer's handle on the records it gave the batcher: :class:`Ticket`.

:meth:`~chworkers.daemon.batcher.Batcher.add` returns one. It is resolved when the
records are durably in the spool (with the batch's number), or when it is certain they
never will be (with the spool's error); :meth:`Ticket.settle` is the all-or-nothing
wait an HTTP push answers by. The batcher moves a ticket through its
:class:`TicketState` under its own lock.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Mapping
from typing import Any

from chworkers import timeouts
from chworkers.daemon.extents import Extent
from chworkers.errors import WaitTimeoutError

__all__ = ["Ticket", "TicketState"]


class TicketState(enum.Enum):
    """Where an add's records are: the batcher moves a ticket through these."""

    PENDING = "pending"  # buffered, or cut and waiting for the spool
    WRITING = "writing"  # being written: can no longer be withdrawn
    SPOOLED = "spooled"
    FAILED = "failed"  # never spooled, and never will be (includes withdrawn)


class Ticket:
    """One :meth:`~chworkers.daemon.batcher.Batcher.add`: resolved when its records are
    durably spooled, or when it is certain they never will be."""

    __slots__ = (
        "_done",
        "_error",
        "_withdraw",
        "batch_seq",
        "deadline",
        "extent",
        "meta",
        "records",
        "retry",
        "rows",
        "state",
    )

    def __init__(
        self,
        withdraw: Callable[[Ticket], bool],
        records: bytes,
        rows: int,
        meta: Mapping[str, Any] | None,
        retry: bool,
        deadline: float | None,
        extent: Extent | None = None,
    ) -> None:
        self._withdraw = withdraw
        # The batcher's, read and changed under its lock: what was added, and where it is.
        self.records = records
        self.rows = rows
        self.meta = meta
        self.retry = retry
        self.deadline = deadline
        #: Where the records are in the file they were read from (a file read once):
        #: a batch of such records only may be spooled by reference.
        self.extent = extent
        self.state = TicketState.PENDING
        self._done = threading.Event()
        self._error: BaseException | None = None
        self.batch_seq: int | None = None

    def resolve(self, seq: int | None, error: BaseException | None) -> None:
        """Spooled as batch ``seq``, or failed for good; the batcher calls it under its lock."""
        self.state = TicketState.FAILED if error is not None else TicketState.SPOOLED
        self.batch_seq = seq
        self._error = error
        self.records = b""
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> int:
        """Block until resolved; return the batch number or re-raise the spool's error
        (e.g. :class:`~chworkers.errors.SpoolFullError`). ``timeout=None`` waits without
        a limit; :class:`~chworkers.errors.WaitTimeoutError` (a :class:`TimeoutError`)
        means the records are still pending (they may yet be spooled)."""
        limit = timeouts.resolve(timeout, None)
        if not self._done.wait(limit):
            raise WaitTimeoutError(f"records not spooled within {limit:g} s", timeout=limit)
        if self._error is not None:
            raise self._error
        assert self.batch_seq is not None
        return self.batch_seq

    def withdraw(self) -> bool:
        """Make sure the records are never spooled, if that is still possible.

        True: they are not in the spool and never will be. False: they are spooled, or
        being written right now (:meth:`wait` tells the outcome)."""
        return self._withdraw(self)

    def settle(self, timeout: float | None) -> int:
        """All or nothing: the batch number once spooled within ``timeout``; otherwise
        the records are withdrawn and :class:`~chworkers.errors.SpoolTimeoutError` (or
        the spool's error) is raised, and they are never spooled later."""
        if not self._done.wait(timeouts.resolve(timeout, None)) and self.withdraw():
            pass  # resolved as failed by the withdrawal
        return self.wait()
