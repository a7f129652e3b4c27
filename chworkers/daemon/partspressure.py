"""Too many parts: slow down and grow batches while a table's merges fall behind.

Every insert makes at least one part per partition it touches, and MergeTree merges
them in the background. When inserts outpace merges, a partition's active parts climb
to the table's ``parts_to_delay_insert`` (ClickHouse then sleeps each insert) and to
``parts_to_throw_insert`` (it refuses them: TOO_MANY_PARTS, code 252). Retrying with
backoff alone keeps sending the same small inserts that caused it. So, per table, the
daemon watches two signals:

* the most active parts in one partition (``system.parts``) against the table's
  ``parts_to_delay_insert`` (its own ``SETTINGS`` or the server's
  ``system.merge_tree_settings``), read every ``check_interval``;
* inserts failing with TOO_MANY_PARTS.

When the parts reach ``slow_down_at`` of ``parts_to_delay_insert``, or an insert is
refused, the table's *factor* doubles (up to ``max_factor``): its batches are cut at
``factor`` times ``max_rows`` and ``max_delay`` (fewer, larger parts), and its batches
go to ClickHouse one at a time, at least ``factor / 2`` times ``min_interval`` apart
(merges get the time). The factor halves again once the parts stay below
``recover_at`` of ``parts_to_delay_insert``, with no refusal, for ``cooldown``: the two
thresholds and the cooldown are the hysteresis that keeps it from flapping.

:class:`PartsPressure` is the one owner of that state; the batcher asks it for a
table's limits (:meth:`PartsPressure.limits`), the dispatcher whether a batch may go
(:meth:`PartsPressure.delay`), and the daemon feeds it checks and failures.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from chworkers.daemon.batcher import BatchLimits
from chworkers.daemon.options import PartsSettings
from chworkers.daemon.workertasks import PartsState, parts_state
from chworkers.errors import ServerError
from chworkers.ops.metrics import Metrics

__all__ = ["PartsPressure", "PartsSettings", "PartsState", "parts_state", "worst_of"]

log = logging.getLogger(__name__)

#: ClickHouse's TOO_MANY_PARTS.
TOO_MANY_PARTS = 252


def worst_of(futures: list[Future[PartsState]]) -> Future[PartsState]:
    """One future for the checks of a table's shards: the state of the shard nearest its
    ``parts_to_delay_insert`` (the shards that answered; an error only if none did)."""
    out: Future[PartsState] = Future()
    lock = threading.Lock()
    left = [len(futures)]

    def done(_: Future[PartsState]) -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        states = [f.result() for f in futures if f.exception() is None]
        if not states:
            error = futures[0].exception()
            assert error is not None
            out.set_exception(error)
            return
        out.set_result(max(states, key=lambda s: s.parts / s.delay_at if s.delay_at else 0.0))

    for future in futures:
        future.add_done_callback(done)
    return out


def is_too_many_parts(error: BaseException | None) -> bool:
    """Whether ``error`` (or what it wraps: retries exhausted) is TOO_MANY_PARTS for the
    table's parts, not for one block's partitions (which is split, never slowed for)."""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, ServerError) and error.code == TOO_MANY_PARTS:
            return "partitions for single insert block" not in str(error).lower()
        # A worker's boot failure carries its last error as text, not as an error.
        wrapped = getattr(error, "last_error", None)
        error = wrapped if isinstance(wrapped, BaseException) else error.__cause__
        seen += 1
    return False


@dataclasses.dataclass
class _Table:
    factor: int = 1
    parts: int = 0
    delay_at: int = 0
    calm_since: float | None = None
    last_sent: float = 0.0
    checking: bool = False
    last_check: float = 0.0


class PartsPressure:
    """Per-table slow-down state; thread-safe (the batcher, the dispatcher, the
    supervisor's loop and the daemon's loop all ask it)."""

    def __init__(
        self,
        settings: PartsSettings,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._tables: dict[str, _Table] = {}

    def __repr__(self) -> str:
        with self._lock:
            slowed = {t: s.factor for t, s in self._tables.items() if s.factor > 1}
        return f"<PartsPressure slowed {slowed or 'none'}>"

    def watch(self, table: str) -> None:
        """Track ``table`` (its metrics exist at their resting values from now on)."""
        with self._lock:
            self._tables.setdefault(table, _Table())
        if self.metrics is not None:
            self.metrics.parts_factor.labels(table=table).set(1)
            self.metrics.parts_slowdowns.labels(table=table)
            self.metrics.too_many_parts.labels(table=table)

    def factor(self, table: str) -> int:
        with self._lock:
            state = self._tables.get(table)
            return 1 if state is None else state.factor

    # -- what the batcher and the dispatcher ask -----------------------------------------

    def limits(self, table: str, limits: BatchLimits) -> BatchLimits:
        """``limits`` for a batch of ``table`` now: grown by its factor while slowed."""
        factor = self.factor(table)
        if factor == 1:
            return limits
        return dataclasses.replace(
            limits, max_rows=limits.max_rows * factor, max_delay=limits.max_delay * factor
        )

    def delay(self, table: str, in_flight: int) -> float:
        """Seconds before a batch of ``table`` may go (0: now), given how many of its
        batches are being inserted; a slowed table sends one at a time, spaced."""
        with self._lock:
            state = self._tables.get(table)
            if state is None or state.factor == 1:
                return 0.0
            if in_flight:
                return max(0.05, self.settings.min_interval)
            gap = self.settings.min_interval * state.factor / 2
            return max(0.0, state.last_sent + gap - self.clock())

    def sent(self, table: str) -> None:
        """A batch of ``table`` went to the workers."""
        with self._lock:
            state = self._tables.get(table)
            if state is not None:
                state.last_sent = self.clock()

    # -- what the daemon feeds in --------------------------------------------------------

    def due(self) -> list[str]:
        """Tables whose parts should be read now (each marked as being checked)."""
        interval = self.settings.check_interval
        if interval <= 0:
            return []
        now = self.clock()
        with self._lock:
            out = [
                t
                for t, s in self._tables.items()
                if not s.checking and now - s.last_check >= interval
            ]
            for table in out:
                self._tables[table].checking = True
                self._tables[table].last_check = now
        return out

    def checked(self, table: str, state: PartsState | None) -> None:
        """The result of a parts check (None: it failed; the next one is due as usual)."""
        with self._lock:
            entry = self._tables.setdefault(table, _Table())
            entry.checking = False
            if state is None:
                return
            entry.parts, entry.delay_at = state.parts, state.delay_at
            ratio = state.parts / state.delay_at if state.delay_at > 0 else 0.0
            if ratio >= self.settings.slow_down_at:
                self._slow_locked(
                    table,
                    entry,
                    f"{state.parts} active parts in a partition "
                    f"(parts_to_delay_insert {state.delay_at})",
                )
            elif ratio < self.settings.recover_at:
                self._calm_locked(table, entry)
            else:
                entry.calm_since = None  # in between: hold the factor
        if self.metrics is not None:
            self.metrics.table_parts.labels(table=table).set(state.parts)
            self.metrics.table_parts_delay_at.labels(table=table).set(state.delay_at)

    def failed(self, table: str, error: BaseException) -> None:
        """An insert into ``table`` failed; TOO_MANY_PARTS slows it down."""
        if not is_too_many_parts(error):
            return
        if self.metrics is not None:
            self.metrics.too_many_parts.labels(table=table).inc()
        with self._lock:
            entry = self._tables.setdefault(table, _Table())
            self._slow_locked(table, entry, "ClickHouse refused an insert: TOO_MANY_PARTS")

    def _slow_locked(self, table: str, entry: _Table, why: str) -> None:
        entry.calm_since = None
        if entry.factor >= self.settings.max_factor:
            return
        if entry.factor == 1 and self.metrics is not None:
            self.metrics.parts_slowdowns.labels(table=table).inc()
        entry.factor = min(self.settings.max_factor, entry.factor * 2)
        self._publish(table, entry.factor)
        log.warning(
            "table %s: %s; slowing down: batches %dx larger, one insert at a time",
            table,
            why,
            entry.factor,
        )

    def _calm_locked(self, table: str, entry: _Table) -> None:
        if entry.factor == 1:
            return
        now = self.clock()
        if entry.calm_since is None:
            entry.calm_since = now
            return
        if now - entry.calm_since < self.settings.cooldown:
            return
        entry.factor //= 2
        entry.calm_since = now if entry.factor > 1 else None
        self._publish(table, entry.factor)
        log.info(
            "table %s: %d active parts in a partition, merges caught up; batches now %dx%s",
            table,
            entry.parts,
            entry.factor,
            " (normal)" if entry.factor == 1 else "",
        )

    def _publish(self, table: str, factor: int) -> None:
        if self.metrics is not None:
            self.metrics.parts_factor.labels(table=table).set(factor)
