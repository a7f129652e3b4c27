"""The broker's ledger: the clients it knows, their rows of counters, what they held.

Each client process that connects is given a row of the shared table
(:mod:`~chworkers.clickhouse.leaseslots`), where it counts the leases it holds, was
granted and timed out on, without telling anyone. The ledger hands rows out, adds them
up for :class:`LeaseStats`, and when a client goes away (end of file on its socket, a
dead process, :meth:`LeaseLedger.reclaim`) folds its row into the totals and notes what
it held: the kernel freed those leases already, the ledger only reports them. Nothing
here does I/O: the broker calls it under its lock.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from chworkers.clickhouse.leaseslots import GRANTED, HELD, MAX_SESSIONS, TIMEOUTS, SlotTable
from chworkers.pids import alive

__all__ = ["LeaseLedger", "LeaseStats", "Peer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseStats:
    """A snapshot of a broker's state."""

    capacity: int
    in_use: int
    waiting: int
    by_holder: dict[str, int] = field(default_factory=dict)
    waiting_by_holder: dict[str, int] = field(default_factory=dict)
    granted_total: int = 0
    timeouts_total: int = 0
    reclaimed_total: int = 0
    clients: int = 0


@dataclass(eq=False)
class Peer:
    """A client connection, as the broker sees it."""

    conn: Any
    holder: str = "?"
    pid: int | None = None
    row: int | None = None
    drop: bool = False  # to be disconnected by the broker's thread


class LeaseLedger:
    def __init__(self, table: SlotTable) -> None:
        self.table = table
        self.peers: list[Peer] = []
        self._rows = deque(range(MAX_SESSIONS))  # free rows of the shared table
        self._granted = 0  # counters of clients that went away
        self._timeouts = 0
        self.reclaimed = 0
        self._unreported: dict[str, int] = {}  # by holder, until reclaim() reports them

    def join(self, peer: Peer, holder: str, pid: int) -> int | None:
        """Give ``peer`` a row; None when every row is taken."""
        if not self._rows:
            return None
        row = self._rows.popleft()
        self.table.reset_row(row, pid)
        peer.holder, peer.pid, peer.row = holder, pid, row
        return row

    def leave(self, peer: Peer) -> None:
        """``peer`` went away (its connection closed, its process died)."""
        held = self._forget(peer)
        if held:
            log.warning(
                "holder %s (pid %s) went away holding %d lease(s); they are free again",
                peer.holder,
                peer.pid,
                held,
            )
            self.reclaimed += held
            self._unreported[peer.holder] = self._unreported.get(peer.holder, 0) + held

    def reclaim(self, holder: str) -> int:
        """Disconnect what is left of ``holder``; what it held, reported once."""
        freed = 0
        for peer in self.peers:
            if peer.holder == holder and not peer.drop:
                freed += self._forget(peer)
                peer.drop = True
        self.reclaimed += freed
        return freed + self._unreported.pop(holder, 0)

    def close(self) -> None:
        """The broker is closing: fold every row into the totals and forget the clients."""
        for peer in self.peers:
            self._forget(peer)
        self.peers.clear()

    def drop_dead(self) -> None:
        """Clients whose process died, before the broker's thread reads their end of file."""
        for peer in self.peers:
            if peer.pid is not None and not peer.drop and not alive(peer.pid):
                peer.drop = True
                self.leave(peer)

    def totals(self) -> tuple[dict[str, int], int, int]:
        """Leases held by holder, granted in all and timed out in all."""
        table = self.table
        by_holder: dict[str, int] = {}
        granted, timeouts = self._granted, self._timeouts
        for peer in self.peers:
            if peer.row is None or peer.drop:
                continue
            held = table.row(peer.row, HELD)
            if held > 0:
                by_holder[peer.holder] = by_holder.get(peer.holder, 0) + held
            granted += table.row(peer.row, GRANTED)
            timeouts += table.row(peer.row, TIMEOUTS)
        return by_holder, granted, timeouts

    def _forget(self, peer: Peer) -> int:
        """Fold a departing client's row into the totals; returns the leases it held."""
        if peer.row is None:
            return 0
        table, row = self.table, peer.row
        held = max(0, table.row(row, HELD))
        self._granted += table.row(row, GRANTED)
        self._timeouts += table.row(row, TIMEOUTS)
        table.clear_owner(row + 1)
        table.reset_row(row)
        self._rows.appendleft(row)  # reused first: the table's pages in use stay few
        peer.row = None
        return held
