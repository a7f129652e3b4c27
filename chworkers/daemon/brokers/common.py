"""What every broker source shares, whichever broker it reads: what the daemon asks of
it (:class:`BrokerSource`), how it reports poison (:data:`DeadLetter`), and its pacing
(:class:`~chworkers.daemon.brokers.trouble.Trouble` is how it says its broker fails)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from chworkers.daemon.spool import SpooledBatch

#: What a source does with poison: ``(records with their errors, batch token)``.
DeadLetter = Callable[[Sequence[tuple[bytes, BaseException]], str], None]

#: Waits between attempts while the broker does not answer (seconds).
RETRY_INITIAL, RETRY_MAX = 0.1, 5.0
#: How often the lag and pending gauges are refreshed (seconds).
GAUGES_EVERY = 2.0


class BrokerSource(Protocol):
    """A source whose batches are acknowledged to a broker once inserted."""

    name: str
    rows: int

    def run(self, stop: threading.Event) -> None:
        """Read until ``stop`` is set (the source's thread)."""

    def still_open(self, batch: SpooledBatch) -> bool:
        """Whether the batch's manifest is still there: inserted only if it is."""

    def complete(self, batch: SpooledBatch) -> None:
        """ClickHouse confirmed the batch: acknowledge its messages (raises
        :class:`~chworkers.errors.BrokerError` when the broker does not answer)."""

    def problems(self) -> list[str]:
        """Why the source is degraded (its broker failing), for the health report."""


__all__ = ["GAUGES_EVERY", "RETRY_INITIAL", "RETRY_MAX", "BrokerSource", "DeadLetter"]
