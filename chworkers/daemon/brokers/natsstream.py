"""``source = "nats"``: a JetStream stream through a durable pull consumer, exactly once
across daemons (docs/brokers.md has the design and the failure table).

The source pulls messages (``fetch``), cuts batches with the pipeline's limits, writes
each batch's manifest into the bucket (:mod:`~chworkers.daemon.brokers.natsmanifests`,
refused when another manifest holds one of its messages), and hands the batch to the
batcher with the manifest's token. A redelivered message (its daemon died, or hung past
``ack_wait``) whose manifest exists makes the source rebuild exactly that batch from the
stream, with its token. The daemon asks :meth:`NatsSource.still_open` before each insert
attempt and calls :meth:`NatsSource.complete` once ClickHouse confirmed it: the messages
are acknowledged.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Unpack

from chworkers.daemon.brokers.common import (
    GAUGES_EVERY,
    RETRY_INITIAL,
    RETRY_MAX,
    SourceArgs,
)
from chworkers.daemon.brokers.natsbatches import NatsBatching
from chworkers.daemon.brokers.natsconsumer import Consumer, Pulled
from chworkers.daemon.brokers.natslink import ACK
from chworkers.daemon.brokers.natsmanifests import Manifest, ManifestStore
from chworkers.daemon.brokers.natsreplies import delivery
from chworkers.daemon.brokers.options import NatsSourceSettings
from chworkers.daemon.spool import SpooledBatch
from chworkers.errors import BrokerError
from chworkers.wording import plural

log = logging.getLogger(__name__)

#: How long a stop waits for inserted batches to be marked done (ack_policy = "all").
SETTLE_ON_CLOSE = 5.0


class NatsSource(NatsBatching):
    """Reads one stream for one pipeline; see the module's docstring."""

    def __init__(
        self,
        *,
        options: NatsSourceSettings,
        consumer: str,
        in_flight: Callable[[], int] | None = None,
        **common: Unpack[SourceArgs],
    ) -> None:
        """``in_flight``: the spool's ``max_in_flight`` (it changes with the workers), for
        ``max_batches = 0``."""
        super().__init__(options=options, consumer=consumer, **common)
        self._in_flight = in_flight
        #: The pull sent while the last one's messages are taken in (None: none).
        self._ahead: concurrent.futures.Future[list[Pulled]] | None = None
        #: Tokens of batches :meth:`still_open` found without a manifest: not inserted,
        #: and their messages not acknowledged either (:meth:`complete`).
        self._gone: set[str] = set()
        #: ack_policy = "all": batches inserted being marked done (:meth:`complete`).
        self._settling: set[concurrent.futures.Future[int]] = set()
        self.link.keep_alive(self._due, self._noted)

    # -- the daemon's side ----------------------------------------------------------------

    def _incarnation(self) -> str:
        return self.link.incarnation  # the stream's creation time

    def still_open(self, batch: SpooledBatch) -> bool:
        """Whether the batch's manifest is still there (else all its messages were
        acknowledged): a batch is tried again only if it is. A manifest that expired
        (``manifest_ttl``: the batch waited longer, ClickHouse down) while this daemon
        holds the batch's messages is written again, with the same token, unless one of
        its messages is in another manifest now (:meth:`complete` then leaves them to
        be redelivered).

        Not asked before the first attempt of a batch this source just made (a read of
        the manifests' key less per batch): its messages cannot have been redelivered
        within those moments (their ``ack_wait`` runs, refreshed by in-progress notes),
        so no other daemon can have completed the batch; and if one had, the token
        would make ClickHouse drop this insert."""
        token = str(batch.meta["broker"]["token"])
        if batch.path is None:
            with self._lock:
                if token in self._unsent:
                    self._unsent.discard(token)
                    return True
        registry = self.link.call(self.link.manifests().load())
        registry.prune(self._floor, time.time(), self.options.manifest_ttl)
        if token in registry.manifests:
            return True
        if self._renewed(batch):
            return True
        with self._lock:
            self._gone.add(token)
        return False

    def _renewed(self, batch: SpooledBatch) -> bool:
        """Write the manifest of ``batch`` again, if it expired while this daemon holds
        its messages (not all acknowledged, none in another manifest); whether it did."""
        broker = batch.meta["broker"]
        token = str(broker["token"])
        ranges = [list(r) for r in broker.get("seqs", ())]
        with self._lock:
            held = token in self._inflight
        if not ranges or not held or ranges[-1][1] <= self._floor:
            return False  # all acknowledged: completed (another daemon rebuilt it)
        manifest = Manifest(token, ranges, time.time(), self.label)
        conflicts = self.link.call(self.link.manifests().register(manifest, self._floor))
        if conflicts:
            log.warning(
                "source %s: the manifest of batch %s expired (manifest_ttl = %s s) and "
                "%s of it are in another batch's manifest now: not inserted here, its "
                "messages are redelivered (at least once)",
                self.name,
                token,
                self.options.manifest_ttl,
                plural(len(conflicts), "message"),
            )
            return False
        log.warning(
            "source %s: the manifest of batch %s expired while the batch waited "
            "(manifest_ttl = %s s); written again, the batch keeps its token",
            self.name,
            token,
            self.options.manifest_ttl,
        )
        return True

    def complete(self, batch: SpooledBatch) -> None:
        """ClickHouse confirmed the batch: acknowledge the messages this daemon holds; a
        rebuilt batch's manifest is marked done, so its other messages are acknowledged by
        whoever receives them.

        A batch not inserted because its manifest was gone and could not be written again
        (:meth:`still_open`) is only forgotten: its messages are not acknowledged (no
        more in-progress notes either), so JetStream redelivers them after ``ack_wait``
        and they are batched anew; acknowledged here, they would be lost."""
        broker = batch.meta["broker"]
        token = str(broker["token"])
        with self._room:
            if token in self._gone:
                self._gone.discard(token)
                self._inflight.pop(token, None)
                self._since.pop(token, None)
                self._unsent.discard(token)
                self._room.notify_all()
                log.info(
                    "source %s: batch %s was not inserted (its manifest is gone); its "
                    "messages are not acknowledged: they are redelivered and batched anew",
                    self.name,
                    token,
                )
                return
        if self._all:
            self._complete_settled(batch)
            return
        with self._lock:
            self._unsent.discard(token)
            replies = list(self._inflight.get(token, ()))
        if replies:
            self.link.send(replies, ACK)
        if broker.get("rebuilt"):
            self.link.call(self.link.manifests().mark_done(token, self._floor))
        with self._lock:
            # Replies added meanwhile (redelivered to us while it was in flight) too.
            late = self._inflight.pop(token, [])[len(replies) :]
            self._since.pop(token, None)
            self._room.notify_all()
        if late:
            self.link.send(late, ACK)
        self._acked(len(replies) + len(late))

    def _complete_settled(self, batch: SpooledBatch) -> None:
        """:meth:`complete` with ``ack_policy = "all"``: the batch's manifest marked
        done (its messages settled), and the settled prefix acknowledged, on the event
        loop while the daemon goes on (three or four round trips to NATS that the
        daemon's completion of the next batches would otherwise wait for). Should that
        fail (NATS down), the messages are not acknowledged: they are redelivered after
        ``ack_wait`` and the batch rebuilt with its token (ClickHouse drops it), as
        after a daemon killed between the insert and the acknowledgement."""
        broker = batch.meta["broker"]
        token = str(broker["token"])
        ranges = [list(r) for r in broker.get("seqs", ())]
        store, consumer = self.link.manifests(), self.link.wire()
        with self._lock:
            self._unsent.discard(token)
            held = self._inflight.pop(token, [])
            self._since.pop(token, None)
            self._room.notify_all()
        future = self.link.start(self._settle_batch(store, consumer, token, ranges))
        with self._lock:
            self._settling.add(future)
        future.add_done_callback(self._batch_settled)
        self._acked(len(held))

    async def _settle_batch(
        self, store: ManifestStore, consumer: Consumer, token: str, ranges: list[list[int]]
    ) -> int:
        """Mark batch ``token``'s manifest done and acknowledge the settled prefix;
        returns the consumer's floor. A manifest gone meanwhile (its batch waited past
        ``manifest_ttl`` and was not written again) is written again, done: its
        messages would else be batched anew."""
        floor = self._floor
        registry = await store.mark_done(token, floor)
        if token not in registry.manifests and ranges and ranges[-1][1] > floor:
            manifest = Manifest(token, ranges, time.time(), self.label)
            registry = await store.settle(manifest, floor)
        return await self._settled.advance(consumer, registry)

    def _batch_settled(self, future: concurrent.futures.Future[int]) -> None:
        with self._lock:
            self._settling.discard(future)
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            log.warning(
                "source %s: a batch inserted could not be marked done (%s): its messages "
                "are redelivered after ack_wait and its batch rebuilt with its token",
                self.name,
                error,
            )
            return
        self._seen_floor(future.result())

    # -- the source's thread ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        backoff = RETRY_INITIAL
        next_gauges = 0.0
        while not stop.is_set():
            try:
                if not self.link.connected:
                    self.link.connect()
                now = time.monotonic()
                if now >= next_gauges:
                    self._publish_gauges()
                    next_gauges = now + GAUGES_EVERY
                if self._holding():
                    self._wait_for_room(stop)
                else:
                    self._fetch()
                if self._assembly.due(self.limits):
                    self._submit_all([self._cut()])
                self.trouble.ok()
                backoff = RETRY_INITIAL
            except BrokerError as exc:
                self.trouble.failing(str(exc))
                stop.wait(backoff)
                backoff = min(RETRY_MAX, backoff * 2)
        try:
            ahead, self._ahead = self._ahead, None
            if ahead is not None:  # what the last pull brought goes in too
                pulled = self.link.result(ahead)
                if pulled:
                    self._take_in(pulled)
            if self._assembly.ids:
                self._submit_all([self._cut()])  # what was read goes in
        except BrokerError as exc:
            log.warning("source %s: the last batch is redelivered later: %s", self.name, exc)

    def _fetch(self) -> None:
        """Pull messages and take them in. While they are framed, their batch's manifest
        written and the batch handed on, the next pull is on its way (asking for what
        the consumer has at once): the source does not wait for NATS between batches."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            pulled = self.link.result(ahead)
        else:
            pulled = self.link.call(self.link.wire().pull(*self._pull_size()))
        if not pulled:
            return
        if not self._holding(more=1):
            # Not when this pull's messages may make the batches held enough: the next
            # pull's would then wait for room, their ack_wait running.
            self._ahead = self.link.start(self.link.wire().pull(self.options.fetch_count, 0.0))
        self._take_in(pulled)

    def max_batches(self) -> int:
        """How many batches this source holds at most (pulled, not yet acknowledged)."""
        if self.options.max_batches:
            return self.options.max_batches
        # Twice what Redis holds: a pull's messages cost nats-server and the source more
        # than a read of Redis's, and a source held back waits for a whole pull to be
        # framed before ClickHouse gets the next batch (0.72x the file source with the
        # spool's max_in_flight + 2 against 0.83x with this, docs/brokers.md "Measured").
        return 2 * (self._in_flight() if self._in_flight is not None else 2) + 4

    def _holding(self, more: int = 0) -> bool:
        """Whether the source holds ``max_batches`` (``more`` counted with them)."""
        with self._lock:
            held = more + len(self._inflight)
        return held >= self.max_batches()

    def _wait_for_room(self, stop: threading.Event) -> None:
        """Pull nothing until a batch is acknowledged (at most until the batch being put
        together is due, and a second: the gauges go on meanwhile)."""
        wait = 1.0
        if self._assembly.ids:
            wait = self.limits.max_delay - (time.monotonic() - self._assembly.started)
        with self._room:
            if len(self._inflight) >= self.max_batches() and not stop.is_set():
                self._room.wait(max(0.0, min(1.0, wait)))

    def _pull_size(self) -> tuple[int, float]:
        """How many messages a pull that may wait asks for, and how long it waits."""
        wait = 1.0
        if self._assembly.ids:
            wait = self.limits.max_delay - (time.monotonic() - self._assembly.started)
        room = (self.limits.max_rows - self._assembly.rows) / self._rows_per_message
        count = max(1, min(self.options.fetch_count, int(room)))
        # A message's ack_wait runs from its delivery, which is after the pull was sent
        # (the deadline below): at most this wait after it, when the pull waits for new
        # messages. Short waits keep that loss small.
        wait = min(wait, 1.0, self.options.ack_wait / 8)
        return count, max(0.01, wait)

    def _due(self) -> tuple[list[str], list[bytes]]:
        """The batches in flight whose messages need an in-progress note now (their
        ack_wait has run for a quarter of it), and those messages (the heartbeat's: a
        batch acknowledged within ``ack_wait / 4`` of its pull, the usual case, costs
        nats-server no note)."""
        due_at = time.monotonic() - self.options.ack_wait / 4
        with self._lock:
            tokens = [token for token, since in self._since.items() if since <= due_at]
            return tokens, [r for token in tokens for r in self._inflight.get(token, ())]

    def _noted(self, tokens: list[str], at: float) -> None:
        """In-progress notes for the batches ``tokens`` were sent at ``at``."""
        with self._lock:
            for token in tokens:
                if token in self._since:
                    self._since[token] = max(self._since[token], at)

    def close(self) -> None:
        """The daemon stopped: no more in-progress notes, the connection closed (batches
        still in flight are redelivered after ack_wait, or replayed from the spool).
        Batches inserted and being marked done get a few seconds to be."""
        with self._lock:
            settling = list(self._settling)
        if settling:
            concurrent.futures.wait(settling, timeout=SETTLE_ON_CLOSE)
        self.link.close()

    def _publish_gauges(self) -> None:
        lag, pending, floor = self.link.call(self.link.wire().state())
        self._seen_floor(floor)
        if self.metrics is not None:
            self.metrics.broker_pending.labels(pipeline=self.name).set(pending)
            self.metrics.broker_lag.labels(pipeline=self.name).set(lag)


__all__ = ["NatsSource", "delivery"]
