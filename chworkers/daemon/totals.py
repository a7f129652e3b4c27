"""What a daemon did: rows read and inserted, batches, dead letters, failed attempts.

The status line (systemd's ``STATUS=``, the terminal's progress line) and the summary
``chworkers run`` prints at the end are written from these counts.

Rows inserted are those of batches this process confirmed and nobody counted before,
whichever of its attempts landed (a retry after a lost answer included): what it added
to ``count()``. The rows of replays (a batch recovered from the spool after a restart,
or rebuilt from a broker's manifest) are counted apart: an earlier run or another daemon
may have inserted and counted them, ClickHouse drops the blocks it already has by their
deduplication token yet counts their rows as written, and its answer does not say how
many it dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from chworkers.ops.statusline import format_status
from chworkers.wording import plural

__all__ = ["Totals", "per_second"]


def per_second(rate: float) -> str:
    """A rate for people: whole numbers from 100 up, three digits below (a slow feed's
    40 rows in 10 minutes is 0.0667 rows/s, not 0)."""
    return f"{rate:,.0f}" if rate >= 100 or rate == 0 else f"{rate:.3g}"


@dataclass
class Totals:
    """What the daemon did, for the progress line and the summary."""

    started: float = field(default_factory=time.monotonic)
    rows_read: int = 0
    rows_inserted: int = 0
    #: Rows of replays (new or dropped as duplicates: ClickHouse does not say which).
    rows_replayed: int = 0
    batches: int = 0
    #: Of ``batches``, those with replayed rows.
    batches_replayed: int = 0
    #: Rows written to the dead letters (the daemon's DeadLetters counts them).
    dead_letters: int = 0
    failures: int = 0

    def rate(self) -> float:
        return self.rows_inserted / max(1e-9, time.monotonic() - self.started)

    def status(self, backlog: int, *, spool_batches: int, spool_bytes: int) -> str:
        """One line: rows inserted, the rate, the backlog and the spool, the trouble."""
        text = format_status(
            self.rate(), backlog, spool_batches=spool_batches, spool_bytes=spool_bytes
        )
        return (
            f"{plural(self.rows_inserted, 'row')} inserted, {text}, "
            f"{plural(self.dead_letters, 'dead letter')}, "
            f"{plural(self.failures, 'failed attempt')}"
        )

    def summary(self, state_dir: Path, spool_batches: int, broker_batches: int = 0) -> str:
        """What ``chworkers run`` prints when it ends: ``spool_batches`` on disk, and
        ``broker_batches`` in the memory tier (not written: left in the broker)."""
        elapsed = time.monotonic() - self.started
        lines = [
            f"inserted {plural(self.rows_inserted, 'row')} in "
            f"{plural(self.batches, 'batch')} in {elapsed:.1f} s ({per_second(self.rate())} rows/s)",
            f"dead letters: {self.dead_letters:,}"
            + (f" (in {state_dir / 'dead-letter'})" if self.dead_letters else ""),
            f"failed attempts (retried): {self.failures:,}",
            f"spool: {plural(spool_batches, 'batch')} left in {state_dir / 'spool'}",
        ]
        if self.batches_replayed:
            lines.insert(
                1,
                f"replayed {plural(self.rows_replayed, 'row')} of "
                f"{plural(self.batches_replayed, 'batch')} that may have landed before "
                "(recovered after a restart, or rebuilt from a broker's manifest): ClickHouse "
                "kept only those it did not have (by deduplication token); not counted as "
                "inserted",
            )
        if broker_batches:
            lines.append(
                f"broker: {plural(broker_batches, 'batch')} not inserted, left pending in the broker "
                "(not in the spool: rebuilt from their manifests at the next start)"
            )
        return "\n".join(lines)
