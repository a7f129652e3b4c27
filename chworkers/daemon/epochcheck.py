"""Epoch numbers looked for ahead of the worker: a batch is checked where it is submitted.

Before a worker sends a JSONEachRow batch read with ``date_time_input_format =
best_effort``, it looks for epoch numbers in the table's timestamp columns to rewrite
(:mod:`chworkers.clickhouse.epochs`): one scan of the batch at C speed, about 8 ms per
100,000 records, during which ClickHouse waits for the request. With one worker nothing
else is being sent meanwhile, so that wait was a tenth of each batch's time. The
daemon's dispatcher works ahead of the workers (a batch is handed over while the one
before it is being inserted), so the daemon scans there instead: a batch with nothing to
rewrite goes to its worker marked so (``timestamps_checked``) and is sent at once.

The columns checked for are a worker's own (:func:`~chworkers.clickhouse.epochs.table_timestamps`,
asked for with ``submit`` when a table's first batch is checked, and again every
:data:`~chworkers.clickhouse.epochs.COLUMNS_TTL` seconds). Nothing depends on them being
current: a worker sends a batch without its own scan only when it finds the same columns
for the table (a column added or altered meanwhile: it scans as before), and a batch that
needs a rewrite goes unmarked, for the worker to rewrite. Until a table's columns are
known, and while they cannot be looked up, its batches go unmarked too.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Future

from chworkers.clickhouse import epochs
from chworkers.clickhouse.epochs import TimestampColumns
from chworkers.errors import ChworkersError

__all__ = ["EpochCheck"]

log = logging.getLogger(__name__)

#: After a failed lookup (ClickHouse down, no worker yet), the next one waits this long.
RETRY_AFTER = 5.0


class EpochCheck:
    """Checks batches for epoch numbers to rewrite, with each table's timestamp columns
    as ``lookup(table)`` (a worker) finds them."""

    def __init__(
        self,
        lookup: Callable[[str], Future[TimestampColumns]],
        *,
        ttl: float = epochs.COLUMNS_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        #: By table: when its columns were found, and they.
        self._known: dict[str, tuple[float, TimestampColumns]] = {}
        #: By table: a lookup in flight (True), or when the next may start after a failure.
        self._asking: dict[str, bool | float] = {}

    def check(
        self, table: str, fmt: str, settings: Mapping[str, object] | None, data: bytes
    ) -> TimestampColumns | None:
        """The columns ``data`` was found to need no rewrite for (to pass to
        ``insert_raw(timestamps_checked=...)``); None when it was not checked (not a
        batch a worker scans, the columns not known yet) or may need a rewrite."""
        if not epochs.rewrites(fmt, settings):
            return None
        columns = self._columns(table)
        if columns is None or epochs.needs_rewrite(data, columns):
            return None
        return columns

    def _columns(self, table: str) -> TimestampColumns | None:
        """``table``'s columns as last found (also while they are looked up again);
        a lookup is started when none was found yet or they are older than ``ttl``."""
        now = self._clock()
        with self._lock:
            known = self._known.get(table)
            if known is not None and now - known[0] < self.ttl:
                return known[1]
            asking = self._asking.get(table)
            if asking is True or (isinstance(asking, float) and now < asking):
                return None if known is None else known[1]
            self._asking[table] = True
        try:
            future = self._lookup(table)
        except ChworkersError as exc:  # the queue full, the supervisor stopping
            self._failed(table, exc)
        else:
            future.add_done_callback(functools.partial(self._answered, table))
        return None if known is None else known[1]

    def _answered(self, table: str, future: Future[TimestampColumns]) -> None:
        if future.cancelled():  # exception() would raise CancelledError: a failed lookup
            self._failed(table, CancelledError("the lookup was cancelled"))
            return
        error = future.exception()
        if error is not None:
            self._failed(table, error)
            return
        with self._lock:
            self._known[table] = (self._clock(), future.result())
            self._asking.pop(table, None)

    def _failed(self, table: str, error: BaseException) -> None:
        log.debug("cannot look up the timestamp columns of %s now: %s", table, error)
        with self._lock:
            self._asking[table] = self._clock() + RETRY_AFTER
