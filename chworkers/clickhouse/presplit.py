"""Split a batch by partition before it is sent, for a table that keeps spanning many.

A batch over more than ``max_partitions_per_insert_block`` partitions is sent whole,
refused (code 252, nothing written), then grouped by partition
(:mod:`chworkers.clickhouse.partitions`). A table whose every batch spans that many pays
the refused request each time: the whole batch sent and parsed for nothing. So once a
table has refused a batch for too many partitions, this worker process remembers it
(:class:`SpanningTables`, keyed by the table and the limit it was given) and groups its
following batches before they are sent: the same evaluation of the table's
``PARTITION BY`` on the batch, the same groups, the same sub-tokens
(:func:`chworkers.clickhouse.dedup.partition_token`) as after a refusal, so a replay of
a batch makes the same sub-batches whichever path it takes. A batch found to fit in one
group is sent as it is, with its own token, as it would have been.

The learned state is forgotten once the table's batches have fit for
:data:`FORGET_AFTER` seconds (a batch spanning again in between restarts the count):
a table that stops spanning stops paying the evaluation. Until a table has refused a
batch in this process, nothing is evaluated.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

__all__ = ["FORGET_AFTER", "SPANNING", "Learning", "SpanningTables"]

#: Seconds of batches that fit after which a table is no longer split before sending.
FORGET_AFTER = 600.0


class SpanningTables:
    """The tables (by key) whose batches span too many partitions lately, in this process."""

    def __init__(
        self, forget_after: float = FORGET_AFTER, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.forget_after = forget_after
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # key -> when a batch last spanned too many

    def spans(self, key: str) -> bool:
        """Whether ``key``'s batches are grouped before they are sent."""
        with self._lock:
            return key in self._last

    def spanned(self, key: str) -> None:
        """A batch of ``key`` spanned too many partitions (refused, or grouped before)."""
        with self._lock:
            self._last[key] = self._clock()

    def fitted(self, key: str) -> None:
        """A batch of ``key`` fit in one group: forgotten once they fit long enough."""
        with self._lock:
            last = self._last.get(key)
            if last is not None and self._clock() - last >= self.forget_after:
                del self._last[key]


#: This worker process's (each worker learns for itself; nothing is shared or saved).
SPANNING = SpanningTables()


def _uncounted(how: str) -> None:
    """No metric to count splits in."""


@dataclasses.dataclass(frozen=True, slots=True)
class Learning:
    """What one insert learns into and counts with: ``key`` (the table and its limit) in
    ``tables``; ``counted(how)`` once per batch split, ``how`` ``"refused"`` (sent
    whole and refused first) or ``"presplit"`` (grouped before it was sent)."""

    key: str
    tables: SpanningTables = SPANNING
    counted: Callable[[str], None] = _uncounted
