"""The spool at start: its identity, its batch numbers, the batches left to replay.

:class:`SpoolRecovery` is the part of :class:`~chworkers.daemon.spool.Spool` that reads
what a previous run left: the spool's id (part of every batch's deduplication token),
the persisted ceiling of batch numbers (never repeated, or ClickHouse would drop new
data as a duplicate), and the batch files, bad ones moved to ``quarantine/``.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from pathlib import Path

from chworkers.daemon import statepaths
from chworkers.daemon.batchfile import SpooledBatch, file_size, read_batch, write_durably
from chworkers.daemon.extents import Extent
from chworkers.daemon.spoollinks import SpoolLinks
from chworkers.daemon.spoolroom import SpoolRoom
from chworkers.errors import SpoolCorruptError, StatePathError, UnusablePathError
from chworkers.wording import plural

__all__ = ["SpoolRecovery", "unusable"]

#: The spool's logger, as before it was cut into modules (log filters keep working).
log = logging.getLogger("chworkers.daemon.spool")

_NAME = re.compile(r"^(\d{20})\.batch$")


def unusable(directory: Path, exc: OSError, doing: str) -> UnusablePathError | StatePathError:
    """The error of a spool whose directory the daemon cannot use (not its user's, not a
    folder, a read-only or failing disk): what, where, and what to do. A configuration
    error (exit code 3): restarting cannot fix it."""
    return statepaths.unusable("spool directory", directory, exc, doing)


class SpoolRecovery(SpoolRoom):
    """The spool's start (see the module's docstring)."""

    quarantine_dir: Path
    fsync: bool
    _seq_file: Path
    _next_seq: int
    links: SpoolLinks
    _by_ref: dict[int, tuple[Extent, ...]]

    def _load_seq_ceiling(self) -> int:
        try:
            return max(1, int(self._seq_file.read_text().strip()))
        except FileNotFoundError:
            return 1
        except OSError as exc:
            raise unusable(self.directory, exc, "read") from exc
        except ValueError as exc:  # a restart would not mend it: exit code 3
            raise UnusablePathError(
                f"{self._seq_file} is unreadable ({exc}); it must hold the next batch number. "
                "Set it above the highest number ever used, or move the spool aside",
                path=str(self._seq_file),
                key="state_dir",
                expected="the spool's next batch number",
            ) from exc

    def _load_id(self) -> str:
        path = self.directory / "spool-id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            spool_id = uuid.uuid4().hex[:16]
        except OSError as exc:
            raise unusable(self.directory, exc, "read") from exc
        try:
            write_durably(path, spool_id.encode(), fsync=self.fsync)
        except OSError as exc:
            raise unusable(self.directory, exc, "write in") from exc
        return spool_id

    def recover(self) -> list[SpooledBatch]:
        """Scan the directory, quarantine bad files, and return the batches to replay.

        Temporary files are leftovers of writes that never completed (and so were never
        acknowledged): they are deleted.
        """
        batches: list[SpooledBatch] = []
        try:
            entries = sorted(self.directory.iterdir())
            for entry in entries:
                if entry.name.startswith(".tmp-"):
                    entry.unlink(missing_ok=True)
        except OSError as exc:
            raise unusable(self.directory, exc, "read") from exc
        for entry in entries:
            m = _NAME.match(entry.name)
            if m is None:
                continue
            try:
                batch = read_batch(entry)
            except SpoolCorruptError as exc:
                try:
                    self._quarantine(entry, str(exc))
                except OSError as moving:
                    raise unusable(self.directory, moving, "quarantine a bad file in") from moving
                continue
            batches.append(batch)
        present = {batch.seq for batch in batches}
        uncommitted = [b for b in batches if b.meta.get("group") in present]
        for batch in uncommitted:  # a split cut short: its whole is split again
            assert batch.path is not None
            batch.path.unlink(missing_ok=True)
        if uncommitted:
            log.info(
                "spool %s: removed %s of batches whose split was cut short (they are split again)",
                self.directory,
                plural(len(uncommitted), "part"),
            )
            batches = [b for b in batches if b.meta.get("group") not in present]
        with self._lock:
            for batch in batches:
                self._sizes[batch.seq] = file_size(batch)
                self._created[batch.seq] = batch.created
                self._next_seq = max(self._next_seq, batch.seq + 1)
                if batch.extents:
                    self._by_ref[batch.seq] = batch.extents
        # The links these batches name are kept; the others are leftovers.
        self.links.adopt(batches)
        self.publish()
        if batches:
            log.info("spool %s: %s to replay", self.directory, plural(len(batches), "batch"))
        return batches

    def _quarantine(self, path: Path, reason: str) -> None:
        self.quarantine_dir.mkdir(exist_ok=True)
        target = self.quarantine_dir / f"{path.name}.{int(time.time())}"
        os.replace(path, target)
        log.error("spool: quarantined %s: %s (moved to %s)", path.name, reason, target)
        if self._metrics is not None:
            self._metrics.spool_quarantined.inc()
