"""The daemon's batches on their way: spooled, offered, sent, confirmed or failed.

:class:`BatchFlow` holds the :class:`~chworkers.daemon.service.Daemon`'s handlers that
the batcher, the dispatcher and the splitter call back: a spooled batch's position is
checkpointed and the batch offered (split by shard, then to its table, then to the
dispatcher); a batch is sent as one insert task (rejected rows bisected out in the
worker); a confirmed one completes its broker entries and lands its dead letters; a
failed one slows its table down when ClickHouse has too many parts.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import Future
from typing import Any

from chworkers.clickhouse.dedup import KEYED_TOKEN
from chworkers.clickhouse.inserts import InsertResult
from chworkers.daemon.brokers.common import BrokerSource
from chworkers.daemon.brokers.wiring import broker_of, skipped
from chworkers.daemon.daemonparts import DaemonParts
from chworkers.daemon.dispatch import shard_of
from chworkers.daemon.filechunks import COLUMNAR_FORMATS
from chworkers.daemon.intake import Intake
from chworkers.daemon.partspressure import parts_state, worst_of
from chworkers.daemon.spool import SpooledBatch
from chworkers.daemon.wholebatch import insert_whole
from chworkers.errors import ChworkersError, WorkerLostError
from chworkers.workers.outcomes import is_permanent

__all__ = ["BatchFlow"]

#: Keyed pushes remembered (their token, and the batch that first carried it), to count
#: one sent again within the run as a replay; the oldest are forgotten past this many.
KEYED_KEPT = 100_000
#: Batches whose dead letters were written, remembered: a batch completed again after a
#: failure later in its completion (its acknowledgement to a broker, the removal of its
#: file) is inserted again, its rows rejected again, and must not write them twice.
LETTERED_KEPT = 10_000

#: The daemon's logger, as before it was cut into modules (log filters keep working).
log = logging.getLogger("chworkers.daemon.service")


class BatchFlow(DaemonParts):
    """The daemon's batch handlers (see the module's docstring)."""

    def _spooled(self, batch: SpooledBatch) -> None:
        try:
            self.checkpoints.commit_batch(batch)
        except OSError as exc:
            # The position also rides in the spooled batch (recovered at start); the
            # batch must be inserted all the same.
            log.error("could not save the position of batch %d: %s", batch.seq, exc)
        self._offer(batch)

    def _offer(self, batch: SpooledBatch) -> None:
        """A spooled batch on its way: split by shard first (a keyed pipeline of a
        sharded cluster), then to its table (created yet?), then to the dispatcher."""
        if self.splitter is not None:
            self.splitter.offer(batch)
        else:
            self.tables.offer(batch)

    def _submit(self, batch: SpooledBatch) -> Future[Any]:
        # The supervisor's one insert task: counted as kind "insert" (rows and bytes as
        # ClickHouse wrote them, insert_duration per request), rejected rows bisected
        # out in the worker and returned with the result.
        broker = broker_of(self._broker_sources(), batch)
        if broker is not None and not broker.still_open(batch):
            log.info(
                "batch %d not inserted here: its manifest is gone (another daemon completed "
                "it, or it expired or was lost and its records are another consumer's now); "
                "its records are not acknowledged here: those not completed elsewhere stay "
                "with the broker, to be batched anew",
                batch.seq,
            )
            return skipped(batch)
        if broker is not None and not batch.rows and not batch.payload:
            return skipped(batch)  # a split broker batch's records all dead-lettered
        replay = self._is_replay(batch)
        if batch.format in COLUMNAR_FORMATS:  # one request; rejected: dead-lettered whole
            return insert_whole(
                lambda: self.supervisor.insert_raw(
                    batch.table,
                    batch.payload,
                    batch.format,
                    rows=batch.rows,
                    settings=batch.settings,
                    deduplication_token=batch.token,
                    shard=None if self.cluster is None else shard_of(batch),
                    replay=replay,
                ),
                batch,
            )
        # Looked for epoch numbers here, ahead of the worker (not on a sharded cluster,
        # whose shards' columns a worker's lookup would not tell apart).
        checked = None
        if self.cluster is None:
            checked = self.epoch_check.check(
                batch.table, batch.format, batch.settings, batch.payload
            )
        return self.supervisor.insert_raw(
            batch.table,
            batch.payload,
            batch.format,
            rows=batch.rows,
            settings=batch.settings,
            deduplication_token=batch.token,
            split_bad_rows=True,
            evolve_schema=self._evolve.get(batch.pipeline),
            shard=None if self.cluster is None else shard_of(batch),
            replay=replay,
            timestamps_checked=checked,
        )

    def _is_replay(self, batch: SpooledBatch) -> bool:
        """Whether ``batch`` may have landed, and been counted, before: it was recovered
        from the spool at start, rebuilt from a broker's manifest, or is a push sent
        again with an ``Idempotency-Key`` this run took already (another batch, the same
        token: ClickHouse drops it), or was confirmed and counted already (its file
        could not be removed then, so it is sent again). A batch this process sent before
        and saw fail is not: no attempt of it was counted, so its confirmation is its
        rows' first count, whichever attempt landed."""
        with self._lock:
            if batch.seq in self._replays or batch.seq in self._counted:
                return True
            if batch.token.startswith(KEYED_TOKEN):
                first = self._keyed.setdefault(batch.token, batch.seq)
                if len(self._keyed) > KEYED_KEPT:
                    del self._keyed[next(iter(self._keyed))]
                if first != batch.seq:
                    return True
        broker = batch.meta.get("broker")
        return isinstance(broker, dict) and bool(broker.get("rebuilt"))

    def _broker_sources(self) -> dict[str, BrokerSource] | None:
        intake: Intake | None = getattr(self, "intake", None)  # made after the replay
        return None if intake is None else intake.brokers

    def _confirmed(self, batch: SpooledBatch, result: InsertResult) -> None:
        with self._lock:
            lettered = batch.seq in self._lettered
        if result.rejected and not lettered:
            self.dead_letters.write(
                batch.table,
                result.rejected,
                pipeline=batch.pipeline,
                batch=batch.token,
                binary=batch.format in COLUMNAR_FORMATS,
            )
            with self._lock:  # seqs are never reused: the oldest are forgotten
                self._lettered[batch.seq] = None
                if len(self._lettered) > LETTERED_KEPT:
                    del self._lettered[next(iter(self._lettered))]
        broker = broker_of(self._broker_sources(), batch)
        if broker is not None:
            # Acknowledged once inserted (a batch split by shard: once all its parts
            # are); failing, the batch is tried again, and its acknowledgement with it.
            whole = self.broker_groups.confirmed(batch)
            if whole is not None:
                broker.complete(whole)
                self.broker_groups.acknowledged(whole)
            else:  # the batch waits for its other parts, and counts no more: read on
                broker.more_room()
        rows = result.rows or 0
        # ClickHouse counts a replay's duplicates as written, and the process that sent it
        # first may have counted them: its rows are shown apart.
        replayed = rows if self._is_replay(batch) else 0
        with self._lock:
            self._replays.discard(batch.seq)
            self.totals.rows_inserted += rows - replayed
            if replayed:
                self.totals.rows_replayed += replayed
                self.totals.batches_replayed += 1
            self.totals.batches += 1
            self._counted[batch.seq] = None  # seqs are never reused: the oldest forgotten
            if len(self._counted) > LETTERED_KEPT:
                del self._counted[next(iter(self._counted))]
        self._stall.progressed()
        if self.shard_stats is not None:
            self.shard_stats.confirmed(shard_of(batch), rows - replayed)

    def _is_permanent(self, error: BaseException) -> bool:
        """Whether a batch's failure is one only a fix (or SIGHUP) can end: the retry
        policy's verdict. A worker lost under the batch is not: the daemon's workers only
        send bytes, so it was killed (by OOM, by an operator), not by the batch."""
        if isinstance(error, WorkerLostError):
            return False
        return is_permanent(error, self.supervisor.retry)

    def _failed(self, batch: SpooledBatch, error: BaseException) -> None:
        self.parts.failed(batch.table, error)  # TOO_MANY_PARTS: slow the table down
        self._stall.failed(error)
        if self.shard_stats is not None:
            self.shard_stats.failed(shard_of(batch), error)
        with self._lock:
            self.totals.failures += 1

    def _check_parts(self) -> None:
        """Read the parts of the tables due for it, in a worker (never on this loop); on
        a sharded cluster on every shard, the most crowded one counting."""
        for table in self.parts.due():
            try:
                if self.cluster is None:
                    future = self.supervisor.submit(parts_state, table)
                else:
                    future = worst_of(
                        [
                            self.supervisor.submit_to(shard, parts_state, table)
                            for shard in range(len(self.cluster))
                        ]
                    )
            except ChworkersError as exc:
                log.debug("cannot check the parts of %s now: %s", table, exc)
                self.parts.checked(table, None)
                continue
            future.add_done_callback(functools.partial(self._parts_checked, table))

    def _parts_checked(self, table: str, future: Future[Any]) -> None:
        error = future.exception()
        if error is not None:
            log.debug("checking the parts of %s failed: %s", table, error)
        self.parts.checked(table, None if error is not None else future.result())

    def _dead_lettered(self, rows: int) -> None:
        """Rows written to the dead letters: rejected rows, a binary batch whole (its
        rows), an unreadable file's, a broker's poison messages."""
        with self._lock:
            self.totals.dead_letters += rows

    def _read(self, rows: int) -> None:
        with self._lock:
            self.totals.rows_read += rows

    def _publish_shards(self) -> None:
        if self.shard_stats is not None and self.splitter is not None:
            self.shard_stats.publish()
            self.metrics.shard_split_waiting.set(self.splitter.waiting())
