"""The durable on-disk spool: every accepted batch is safe before it is acknowledged.

A directory of batch files (:mod:`chworkers.daemon.batchfile`: one file per batch,
written so that it is either wholly in the spool or not at all), with a size cap and a
policy for when it is full. A batch is removed only after ClickHouse confirmed its
insert. Its deduplication token is fixed when it is spooled, so a replay after a crash
sends byte-identical data with the same token and ClickHouse drops what it already has.

A file that is truncated, has a bad CRC or an unreadable header is moved to
``quarantine/`` with a log line and a metric, and the daemon goes on.

Here: writing, replacing and removing batches. What the spool finds at start is
:mod:`chworkers.daemon.spoolrecovery`'s; its room, trouble and gauges are
:mod:`chworkers.daemon.spoolroom`'s; reserving room and batch numbers is
:mod:`chworkers.daemon.spoolreserve`'s; batches by reference (reading them, copying
them into the spool) are :mod:`chworkers.daemon.spoolrefs`' and their files' links
:mod:`chworkers.daemon.spoollinks`'.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chworkers.clickhouse.dedup import batch_token
from chworkers.daemon.batchfile import (
    SpooledBatch,
    batch_overhead,
    encode_batch,
    file_size,
    fsync_directory,
    read_batch,
    write_durably,
)
from chworkers.daemon.extents import Extent
from chworkers.daemon.memorytier import MemoryTier
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spoollinks import SpoolLinks
from chworkers.daemon.spoolrecovery import unusable
from chworkers.daemon.spoolrefs import SpoolReferences
from chworkers.daemon.spoolreserve import LOG_EVERY, Reservation
from chworkers.daemon.spoolroom import TROUBLE_FORGOTTEN_AFTER as TROUBLE_FORGOTTEN_AFTER
from chworkers.daemon.spoolroom import Policy
from chworkers.errors import SpoolCorruptError, SpoolWriteError
from chworkers.ops.metrics import Metrics

__all__ = ["PartSpec", "Policy", "Reservation", "Spool", "SpooledBatch", "read_batch"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PartSpec:
    """One part a spooled batch is split into (:meth:`Spool.replace`): its records, their
    count, its deduplication token and what its meta adds (its shard)."""

    payload: bytes
    rows: int
    token: str
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Spool(SpoolReferences):
    """A directory of batch files with a size cap and a full-spool policy.

    ``settings`` are the daemon's ``[spool]`` (its cap, policy and fsync; the defaults
    when not given); the dispatcher reads the rest of them.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        settings: SpoolSettings | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.quarantine_dir = self.directory / "quarantine"
        self.settings = settings = settings or SpoolSettings()
        self.max_bytes = settings.max_bytes
        self.policy: Policy = settings.policy
        self.fsync = settings.fsync
        self._metrics = metrics
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._sizes: dict[int, int] = {}  # seq -> file size, for every batch on disk
        self._created: dict[int, float] = {}
        self._reserved = 0
        self.memory = MemoryTier(settings.memory_max_bytes)
        self._next_seq = 1
        self._closed = False
        self._by_ref: dict[int, tuple[Extent, ...]] = {}
        self._references_paused = False
        self._copier: threading.Thread | None = None
        # What keeps batches out right now (full, or the disk failing), for problems().
        self._trouble: str | None = None
        self._trouble_reason = ""
        self._trouble_since: float | None = None
        self._trouble_last = 0.0
        self._trouble_count = 0
        self._waiters = 0
        self._memory_waiters = 0  # of those, waiting for the memory tier
        self._waiting_since: float | None = None
        self._waiting_logged = -LOG_EVERY
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unusable(self.directory, exc, "create") from exc
        self.links = SpoolLinks(self.directory, fsync=self.fsync)
        self.spool_id = self._load_id()
        # Sequence numbers name files and make deduplication tokens, so they must never
        # repeat, not even after every batch was confirmed and the directory is empty:
        # a repeated token would make ClickHouse drop new data as a duplicate. The
        # high-water mark is persisted in blocks (one small fsync'd write per block).
        self._seq_file = self.directory / "seq"
        self._seq_ceiling = self._load_seq_ceiling()
        self._next_seq = self._seq_ceiling

    # -- writing -------------------------------------------------------------------

    def put(
        self,
        table: str,
        payload: bytes,
        *,
        format: str,
        rows: int,
        settings: Mapping[str, Any] | None = None,
        pipeline: str = "",
        meta: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        token: str | None = None,
        memory: bool = False,
    ) -> SpooledBatch:
        """Write a batch durably and return it (with its fixed token) for inserting
        (``memory``: keep it in the memory tier instead).

        When the spool is full: ``block`` waits up to ``timeout`` for space, ``reject``
        raises :class:`SpoolFullError` at once, ``drop_oldest`` deletes the oldest
        batches (counted in a metric; one already being inserted may still land). A write
        that fails (:class:`SpoolWriteError`, e.g. the disk is full) leaves nothing behind.
        """
        reservation = self.reserve(
            len(payload) + batch_overhead(table, pipeline, meta), timeout=timeout, memory=memory
        )
        return self.write(
            reservation,
            table,
            payload,
            format=format,
            rows=rows,
            settings=settings,
            pipeline=pipeline,
            meta=meta,
            token=token,
        )

    def write(
        self,
        reservation: Reservation,
        table: str,
        payload: bytes,
        *,
        format: str,
        rows: int,
        settings: Mapping[str, Any] | None = None,
        pipeline: str = "",
        meta: Mapping[str, Any] | None = None,
        token: str | None = None,
        refs: Sequence[Extent] = (),
    ) -> SpooledBatch:
        """Write a batch into a reservation (which it uses up, whatever happens).

        ``token``: the batch's deduplication token when the caller has one (a pushed
        request's ``Idempotency-Key``); by default one made from the batch number.
        ``refs``: the records are these extents of the files they were read from
        (``payload`` empty): only those are written (:mod:`chworkers.daemon.extents`).
        A memory reservation's batch is kept in memory, not written."""
        seq = reservation.seq
        try:
            batch = SpooledBatch(
                seq=seq,
                table=table,
                format=format,
                rows=rows,
                token=token or batch_token(self.spool_id, seq),
                created=time.time(),
                payload=payload,
                settings=dict(settings or {}),
                pipeline=pipeline,
                meta=dict(meta or {}),
                extents=tuple(refs),
            )
            if reservation.memory:
                return self._keep(reservation, batch)
            path = self.directory / f"{seq:020d}.batch"
            if refs:
                self.links.sync()  # the links it names outlast a crash as it does
            write_durably(path, encode_batch(batch), fsync=self.fsync, undo=True)
        except BaseException as exc:
            with self._lock:
                if isinstance(exc, SpoolWriteError):
                    self._note_trouble("io", str(exc))
                self._reserved -= reservation.size
                self._space.notify_all()
            raise
        batch = dataclasses.replace(batch, path=path)
        if batch.extents:
            self.links.attach(seq, batch.extents)
        with self._lock:
            self._reserved -= reservation.size
            self._sizes[seq] = file_size(batch)
            self._created[seq] = batch.created
            if batch.extents:
                self._by_ref[seq] = batch.extents
            self._clear_trouble()
        self.publish()
        return batch

    def replace(self, whole: SpooledBatch, parts: Sequence[PartSpec]) -> list[SpooledBatch]:
        """Replace a spooled batch by its parts (one per shard of a cluster), durably.

        Each part is written (fsync'd) under a batch number of its own, with ``group``
        (the whole's number) in its meta; then the whole's file is removed, and that
        removal is the commit: a start that finds the whole still there removes its
        parts (:meth:`recover`) and the whole is split again, the same way. The parts
        take the whole's place, not more of the cap (they may pass it for a moment).

        A batch of the memory tier (a broker's) is replaced there: there is nothing to
        commit, since a daemon that stops loses its parts as it would the whole, and
        the broker's manifest rebuilds the whole, split again the same way."""
        kept: list[SpooledBatch] | None = None
        with self._lock:
            if self.memory.get(whole.seq) is not None:
                kept = [self._part(whole, part, self._take_seq_locked()) for part in parts]
                self.memory.swap(whole.seq, kept)
                self._space.notify_all()
        if kept is not None:
            self.publish()
            return kept
        written: list[SpooledBatch] = []
        refs: tuple[Extent, ...] = ()
        try:
            for part in parts:
                with self._lock:
                    seq = self._take_seq_locked()
                batch = self._part(whole, part, seq)
                path = self.directory / f"{seq:020d}.batch"
                write_durably(path, encode_batch(batch), fsync=self.fsync, undo=True)
                written.append(dataclasses.replace(batch, path=path))
            with self._lock:  # before its file goes: a copy being made must not bring it back
                refs = self._by_ref.pop(whole.seq, ())
            durable = self._unlink_durably(whole.seq)
        except BaseException as exc:
            for batch in written:  # not committed: the whole stays, to be split again
                if batch.path is not None:
                    batch.path.unlink(missing_ok=True)
            if refs:
                with self._lock:
                    self._by_ref[whole.seq] = refs
            if isinstance(exc, SpoolWriteError):
                with self._lock:
                    self._note_trouble("io", str(exc))
            raise
        with self._lock:
            self._sizes.pop(whole.seq, None)
            self._created.pop(whole.seq, None)
            for batch in written:
                self._sizes[batch.seq] = file_size(batch)
                self._created[batch.seq] = batch.created
            self._space.notify_all()
        if durable:  # else a crash may bring the whole back, which needs its links:
            self.links.detach(whole.seq, refs)  # they go at the next start then
        self.publish()
        return written

    @staticmethod
    def _part(whole: SpooledBatch, part: PartSpec, seq: int) -> SpooledBatch:
        """Batch ``seq``: ``part`` of ``whole``, with the whole's number as its ``group``."""
        return SpooledBatch(
            seq=seq,
            table=whole.table,
            format=whole.format,
            rows=part.rows,
            token=part.token,
            created=whole.created,
            payload=part.payload,
            settings=dict(whole.settings),
            pipeline=whole.pipeline,
            meta={**whole.meta, **part.meta, "group": whole.seq},
        )

    def _unlink_durably(self, seq: int) -> bool:
        """Remove batch ``seq``'s file: the commit of its split. Once the file is gone
        the split is done whatever follows (its parts are durable): a directory that
        cannot be fsync'd is a warning, not a failure, whose rollback would remove the
        parts too and leave the batch nowhere. A crash may then bring the whole back
        beside its parts, which the next start resolves (:meth:`recover`): False then."""
        path = self.directory / f"{seq:020d}.batch"
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise SpoolWriteError(
                f"cannot remove batch {seq} from {self.directory}: {exc.strerror or exc}",
                path=str(self.directory),
                errno=exc.errno,
            ) from exc
        if not self.fsync:
            return True
        try:
            fsync_directory(self.directory)
        except OSError as exc:
            log.warning(
                "spool %s: batch %d was split, but the removal of its file cannot be made "
                "durable (%s): after a crash it may be split again (its parts go by the "
                "same tokens)",
                self.directory,
                seq,
                exc.strerror or exc,
            )
            return False
        return True

    def _keep(self, reservation: Reservation, batch: SpooledBatch) -> SpooledBatch:
        with self._lock:
            self.memory.put(batch, reservation.size)
        self.publish()
        return batch

    def load(self, batch: SpooledBatch) -> SpooledBatch:
        """The whole batch (its payload too) of a batch's description: from memory, or
        read back from its file (:class:`SpoolCorruptError` when that fails)."""
        with self._lock:
            kept = self.memory.get(batch.seq)
        if kept is not None:
            return kept
        if batch.extents:  # by reference: the records are read from their files
            referenced = self._load_reference(batch)
            if referenced is not None:
                return referenced
            # Copied into the spool meanwhile (:meth:`materialize`): read from there.
        if batch.path is None:
            raise SpoolCorruptError(
                f"batch {batch.seq} is neither on disk nor in memory any more",
                path=str(self.directory),
            )
        return read_batch(batch.path)

    # -- confirming ----------------------------------------------------------------

    def remove(self, batch: SpooledBatch) -> None:
        """Forget a batch once ClickHouse confirmed it."""
        with self._lock:
            in_memory = self.memory.pop(batch.seq)
            # Before the file goes: a copy of it being made meanwhile must not come back.
            refs = self._by_ref.pop(batch.seq, ())
            self._references_ok()
        if not in_memory:
            (self.directory / f"{batch.seq:020d}.batch").unlink(missing_ok=True)
        self.links.detach(batch.seq, refs)
        with self._lock:
            self._sizes.pop(batch.seq, None)
            self._created.pop(batch.seq, None)
            if self._trouble_reason == "full":
                self._clear_trouble()  # there is room now; the next refusal says so again
            self._space.notify_all()
        self.publish()

    def close(self) -> None:
        """Wake producers blocked on a full spool; they get :class:`SpoolFullError`."""
        with self._lock:
            self._closed = True
            self._space.notify_all()

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<Spool {self.directory}: {s['batches']:.0f} batches, {s['bytes']:.0f} of "
            f"{self.max_bytes} bytes, policy {self.policy}>"
        )
