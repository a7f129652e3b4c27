"""Batches spooled by reference: reading them, and copying them into the spool when they
may have to wait.

A batch spooled by reference (:mod:`chworkers.daemon.extents`) is safe from its file
being removed or renamed (:mod:`chworkers.daemon.spoollinks` keeps its inode), but not
from the file being truncated or rewritten in place (``copytruncate``, ``> file``): its
bytes are then gone. So a reference is meant to cover the short while of a healthy
insert, not an outage: :class:`SpoolReferences` copies ("materializes") a referenced
batch into its spool file as soon as an attempt to insert it fails (its records are in
hand then), and when ClickHouse is in trouble (an attempt failed with an error that is
not the table's own) it copies every batch still spooled by reference in the
background and has new batches spooled as copies, until an insert is confirmed again.

The copy replaces the reference's spool file atomically (written aside, fsync'd, renamed
over it), so a crash leaves one or the other, both with the batch's token; the batch's
link is dropped once it is copied.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from chworkers.daemon import extents
from chworkers.daemon.batchfile import SpooledBatch, encode_batch, read_batch, write_durably
from chworkers.daemon.extents import Extent
from chworkers.daemon.spoollinks import SpoolLinks
from chworkers.daemon.spoolreserve import SpoolReservations
from chworkers.errors import SpoolCorruptError, SpoolError
from chworkers.wording import plural

__all__ = ["SpoolReferences"]

#: The spool's logger, as before it was cut into modules (log filters keep working).
log = logging.getLogger("chworkers.daemon.spool")

#: How long a stop may spend copying the batches still spooled by reference (seconds).
COPY_AT_STOP = 5.0


class SpoolReferences(SpoolReservations):
    """The spool's batches by reference (see the module's docstring)."""

    links: SpoolLinks
    #: seq -> its extents, for every batch on disk that is spooled by reference now.
    _by_ref: dict[int, tuple[Extent, ...]]
    _references_paused: bool
    _copier: threading.Thread | None

    def takes_references(self) -> bool:
        """Whether a new batch may be spooled by reference now (not while ClickHouse is
        in trouble: its batch would wait)."""
        return not self._references_paused

    def by_reference(self) -> list[int]:
        """The batches spooled by reference now (their numbers)."""
        with self._lock:
            return sorted(self._by_ref)

    def _load_reference(self, batch: SpooledBatch) -> SpooledBatch | None:
        """The batch with its records read from their files, while it is spooled by
        reference (None: it is not, or no longer, so). Records that are gone for good
        (the file removed without a link, truncated, rewritten) cannot be inserted: the
        batch file goes to quarantine and :class:`SpoolCorruptError` says why."""
        with self._lock:
            refs = self._by_ref.get(batch.seq)
        if refs is None:
            return None
        try:
            payload = extents.read(refs, seq=batch.seq)
        except SpoolCorruptError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError):
                raise  # the read failed (EIO, EMFILE), not the batch: worth another try
            if not self._lost(batch.seq, str(exc)):
                return None  # copied into the spool meanwhile (its link went with it)
            raise
        return dataclasses.replace(batch, payload=payload)

    def _lost(self, seq: int, reason: str) -> bool:
        """A batch whose records are gone leaves the spool (kept in quarantine); False
        when it is no longer by reference (copied, or confirmed, meanwhile)."""
        with self._lock:
            refs = self._by_ref.pop(seq, None)
            if refs is None:
                return False
            self._sizes.pop(seq, None)
            self._created.pop(seq, None)
            self._space.notify_all()
        path = self.directory / f"{seq:020d}.batch"
        try:
            self._quarantine(path, reason)
        except OSError:
            path.unlink(missing_ok=True)
        self.links.detach(seq, refs)
        self.publish()
        return True

    # -- copying -------------------------------------------------------------------

    def attempt_failed(self, batch: SpooledBatch, *, trouble: bool = True) -> None:
        """An attempt to insert ``batch`` failed: copy it into the spool when it is by
        reference (with its records when ``batch`` has them). ``trouble``: the failure
        was ClickHouse's, not the table's: copy every batch still by reference too, and
        spool new ones as copies until an insert is confirmed."""
        if trouble:
            self.in_trouble()
        self.materialize(batch)

    def in_trouble(self) -> None:
        """ClickHouse fails inserts (or the creation of a table batches wait for): new
        batches are spooled as copies until an insert is confirmed, and those spooled
        by reference are copied in the background."""
        with self._lock:
            was = self._references_paused
            self._references_paused = True
            copier = None
            if self._copier is None and self._by_ref and not self._closed:
                copier = self._copier = threading.Thread(
                    target=self._copy_all, name="chworkers-spool-copy", daemon=True
                )
        if not was:
            log.info(
                "spool %s: inserts fail: batches are spooled as copies until one is "
                "confirmed, and those spooled by reference are copied",
                self.directory,
            )
        if copier is not None:
            copier.start()

    def _references_ok(self) -> None:
        """An insert was confirmed: new batches may be spooled by reference again
        (called under the lock)."""
        self._references_paused = False

    def materialize(self, batch: SpooledBatch) -> bool:
        """Copy a batch spooled by reference into its spool file (its records from
        ``batch.payload`` when it has them, else read from their files); True when this
        call copied it (durably: until then it stays by reference, its files linked)."""
        with self._lock:
            refs = self._by_ref.get(batch.seq)
        if refs is None:
            return False
        path = self.directory / f"{batch.seq:020d}.batch"
        placed: list[bool] = []
        try:
            payload = batch.payload or extents.read(refs, seq=batch.seq)
            copy = dataclasses.replace(batch, payload=payload, extents=(), path=path)
            done = write_durably(
                path, encode_batch(copy), fsync=self.fsync, place=self._place(batch.seq, placed)
            )
        except SpoolError as exc:
            with self._lock:
                if batch.seq not in self._by_ref:
                    return False  # confirmed meanwhile: its link went with it
            if placed:
                # The copy replaced the batch's file, but the folder's fsync failed: a
                # crash may still bring back the file by reference, whose records must
                # then be where it says. So it stays by reference, its files linked,
                # until a copy is durable (the next copy, or its confirmation).
                log.warning(
                    "spool: batch %d copied into the spool, but not durably (%s): it "
                    "stays by reference, its files kept, until it is copied again or "
                    "confirmed",
                    batch.seq,
                    exc,
                )
                return False
            # Not copied: it stays by reference (and is inserted from its file, or
            # found gone when it is loaded).
            log.warning("spool: cannot copy batch %d spooled by reference: %s", batch.seq, exc)
            return False
        if not done:
            return False
        with self._lock:
            # Confirmed meanwhile: its removal detached its links already.
            done = self._by_ref.pop(batch.seq, None) is not None
            if done and self._metrics is not None:
                # Counted as it leaves the batches by reference, not after its links
                # are gone: whoever sees it copied (by_reference) sees it counted.
                self._metrics.spool_reference_copies.inc()
        if done:
            self.links.detach(batch.seq, refs)
            self.publish()
        return done

    def _place(self, seq: int, placed: list[bool]) -> Callable[[Path, Path], bool]:
        def place(tmp: Path, path: Path) -> bool:
            # Under the lock: a batch confirmed (removed) meanwhile must not come back.
            with self._lock:
                if seq not in self._by_ref:
                    return False
                os.replace(tmp, path)
                self._sizes[seq] = path.stat().st_size
            placed.append(True)
            return True

        return place

    def copy_references(
        self, timeout: float = COPY_AT_STOP, stop: Callable[[], bool] | None = None
    ) -> int:
        """At a stop, with the dispatcher stopped: copy the batches still spooled by
        reference, oldest first, for up to ``timeout`` seconds or until ``stop()`` says
        so (a second signal), so that their files may change while the daemon is down.
        The batches left by reference (their number) are logged and returned."""
        deadline = time.monotonic() + timeout
        copied = 0
        for seq in self.by_reference():
            if time.monotonic() >= deadline or (stop is not None and stop()):
                break
            try:
                described = read_batch(self.directory / f"{seq:020d}.batch")
            except SpoolCorruptError:
                continue
            copied += self.materialize(described)
        left = len(self.by_reference())
        if copied or left:
            log.log(
                logging.WARNING if left else logging.INFO,
                "spool %s: copied %s spooled by reference before the stop%s",
                self.directory,
                plural(copied, "batch"),
                f"; {plural(left, 'batch')} left by reference: their files must not be "
                "truncated or rewritten before the next start"
                if left
                else "",
            )
        return left

    def _copy_all(self) -> None:
        """Copy every batch spooled by reference, oldest first, while ClickHouse is in
        trouble (the copier thread)."""
        copied = 0
        try:
            with self._lock:
                todo = sorted(self._by_ref)
            for seq in todo:
                with self._lock:
                    if not self._references_paused or self._closed:
                        break
                    if seq not in self._by_ref:
                        continue  # confirmed, or copied by its failed attempt, meanwhile
                try:
                    described = read_batch(self.directory / f"{seq:020d}.batch")
                except SpoolCorruptError:
                    continue  # removed meanwhile, or unreadable: the dispatcher finds out
                # One that cannot be copied (its file changed already) stays by
                # reference; the others are copied all the same.
                copied += self.materialize(described)
        finally:
            with self._lock:
                self._copier = None
            if copied:
                log.info(
                    "spool %s: copied %s spooled by reference (inserts fail)",
                    self.directory,
                    plural(copied, "batch"),
                )
