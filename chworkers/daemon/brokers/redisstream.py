"""``source = "redis"``: a Redis Stream through a consumer group, exactly once across
daemons (docs/brokers.md has the design and the failure table).

The source reads entries (``XREADGROUP``), claims those that a dead or stuck consumer
left pending (``XAUTOCLAIM``), cuts batches with the pipeline's limits, writes each
batch's manifest beside the stream, and hands the batch to the batcher with the
manifest's token (:mod:`~chworkers.daemon.brokers.redisbatches`). The daemon asks
:meth:`RedisSource.still_open` before each insert attempt and calls
:meth:`RedisSource.complete` once ClickHouse confirmed it: the entries are acknowledged
and the manifest removed, atomically. The commands themselves are
:class:`~chworkers.daemon.brokers.redisgroup.StreamGroup` 's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Unpack

from chworkers.daemon.brokers import redisentries
from chworkers.daemon.brokers.common import (
    GAUGES_EVERY,
    RETRY_INITIAL,
    RETRY_MAX,
    SourceArgs,
)
from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisbatches import MANIFESTS_AHEAD, RedisBatching
from chworkers.daemon.spool import SpooledBatch
from chworkers.errors import BrokerError
from chworkers.wording import plural

log = logging.getLogger(__name__)

#: Seconds a stopping daemon waits for the acknowledgements still queued.
ACK_CLOSE_WAIT = 5.0


class RedisSource(RedisBatching):
    """Reads one stream for one pipeline; see the module's docstring."""

    def __init__(
        self,
        *,
        options: RedisSourceSettings,
        consumer: str,
        in_flight: Callable[[], int] | None = None,
        **common: Unpack[SourceArgs],
    ) -> None:
        """``in_flight``: the spool's ``max_in_flight`` (it changes with the workers), for
        ``max_batches = 0``."""
        super().__init__(options=options, consumer=consumer, **common)
        self._in_flight = in_flight
        #: Tokens of batches :meth:`still_open` found without a manifest: not inserted,
        #: and their entries not acknowledged either (:meth:`complete`).
        self._gone: set[str] = set()

    # -- the daemon's side ----------------------------------------------------------------

    def still_open(self, batch: SpooledBatch) -> bool:
        """Whether the batch's manifest is still there (else another daemon completed it,
        or it expired): a batch is tried again, or replayed from the spool, only if it is.
        A manifest gone while every entry of the batch is still this consumer's (it
        expired while the heartbeat could not refresh it, or a failover lost it) is
        written again, with the same token.

        Not asked before the first attempt of a batch this source just made (one round
        trip less per batch): no other daemon can have completed it within those moments
        without claiming its entries first, which their refresh prevents; and if one had,
        the token would make ClickHouse drop this insert."""
        token = str(batch.meta["broker"]["token"])
        if batch.path is None:
            with self._lock:
                if token in self._unsent:
                    self._unsent.discard(token)
                    return True
        if self.redis.has_manifest(token):
            return True
        with self._lock:
            held = token in self._inflight
        ids = [str(i) for i in batch.meta["broker"]["ids"]]
        if held and self.redis.rewrite(token, ids):
            log.warning(
                "source %s: the manifest of batch %s was gone (expired, manifest_ttl = %s s, "
                "or lost in a failover) while its entries are still this consumer's; "
                "written again, the batch keeps its token",
                self.name,
                token,
                self.options.manifest_ttl,
            )
            return True
        with self._lock:
            self._gone.add(token)
        return False

    def complete(self, batch: SpooledBatch) -> None:
        """ClickHouse confirmed the batch: acknowledge its entries, remove its manifest.

        A batch not inserted because its manifest was gone (:meth:`still_open`) is only
        forgotten: another daemon that completed it acknowledged its entries; a manifest
        that expired, or that a failover lost, leaves them pending, to be claimed after
        ``claim_idle`` and batched anew (acknowledged here, they would be lost)."""
        broker = batch.meta["broker"]
        token = str(broker["token"])
        with self._room:
            if token in self._gone:
                self._gone.discard(token)
                self._inflight.pop(token, None)
                self._unsent.discard(token)
                self._room.notify_all()
                log.info(
                    "source %s: batch %s was not inserted (its manifest is gone); its "
                    "entries are not acknowledged: still pending, they are claimed and "
                    "batched anew",
                    self.name,
                    token,
                )
                return
        # Sent by the acknowledging thread (with those of the batches confirmed
        # meanwhile): the completion thread takes the next inserted batch at once. The
        # batch stays held (its entries and manifest refreshed) until Redis took it.
        self._acks.add(list(broker["ids"]), token)

    def wait_acked(self, timeout: float) -> bool:
        """Up to ``timeout`` seconds for every batch completed to be acknowledged."""
        return self._acks.wait(timeout)

    def close(self) -> None:
        """The daemon is done with its batches (it stopped): up to ``ACK_CLOSE_WAIT``
        seconds for the acknowledgements still queued. What Redis did not take stays
        pending with its manifest: rebuilt at the next start, or by another daemon after
        ``claim_idle``, with the same token (ClickHouse drops it as a duplicate)."""
        left = self._acks.close(ACK_CLOSE_WAIT)
        if left:
            log.warning(
                "source %s: %s inserted and not acknowledged (Redis did not answer): their "
                "entries stay pending with their manifests, rebuilt at the next start (or "
                "by another daemon after claim_idle) and dropped by ClickHouse as duplicates",
                self.name,
                plural(left, "batch", "batches"),
            )

    def problems(self) -> list[str]:
        """Why the source is degraded: its reads or its acknowledgements failing."""
        return self.trouble.problems() + self._acks.trouble.problems()

    # -- the source's thread ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        backoff = RETRY_INITIAL
        started = False
        next_claim = next_gauges = 0.0
        # In a thread of its own: the reading thread may wait long in the batcher (the
        # spool full during an outage), and its entries must not look abandoned meanwhile.
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(stop,), name=f"source-{self.name}-heartbeat", daemon=True
        )
        heartbeat.start()
        while not stop.is_set():
            try:
                if not started:
                    self._create_group()
                    self._read_own_pending()
                    started = True
                now = time.monotonic()
                if now >= next_claim:
                    self._claim()
                    next_claim = now + self.options.claim_interval
                if now >= next_gauges:
                    self._publish_gauges()
                    next_gauges = now + GAUGES_EVERY
                if self._holding():
                    self._wait_for_room(stop)
                else:
                    self._fetch()
                if self._assembly.due(self.limits):
                    self._cut()
                self.trouble.ok()
                backoff = RETRY_INITIAL
            except BrokerError as exc:
                self.trouble.failing(str(exc))
                stop.wait(backoff)
                backoff = min(RETRY_MAX, backoff * 2)
        try:
            if self._assembly.ids:
                self._cut()  # what was read goes in (the batcher takes it or says it closed)
            self._settle()
        except BrokerError as exc:
            log.warning("source %s: the last batch stays pending in Redis: %s", self.name, exc)

    def _create_group(self) -> None:
        if self.redis.create():
            log.info(
                "source %s: created consumer group %s on %s",
                self.name,
                self.redis.group,
                self.redis.stream,
            )
        self.redis.announce()

    def _read_own_pending(self) -> None:
        """Entries this consumer had before a restart: rebuilt like claimed ones."""
        last = "0"
        while True:
            messages = self.redis.read(last, self.options.fetch_count)
            if not messages:
                return
            log.info(
                "source %s: %s pending from before, rebuilt",
                self.name,
                plural(len(messages), "entry"),
            )
            self._redelivered(messages)
            last = messages[-1].id

    def max_batches(self) -> int:
        """How many batches this source holds at most (read, not yet acknowledged)."""
        if self.options.max_batches:
            return self.options.max_batches
        # Every insert slot busy, and beside them the batches whose manifests are on
        # their way (MANIFESTS_AHEAD) and those inserted whose acknowledgements are.
        return (self._in_flight() if self._in_flight is not None else 6) + 2 + MANIFESTS_AHEAD

    def _holding(self) -> bool:
        """Whether the source holds ``max_batches``."""
        return len(self._sent) + len(self._inflight) >= self.max_batches()

    def _may_read_ahead(self) -> bool:
        """Whether a read may be sent ahead (asked as a full reply comes in)."""
        return not self._holding()

    def _wait_for_room(self, stop: threading.Event) -> None:
        """Hold off reading until a batch is acknowledged (at most until the batch being
        put together is due, and a second: claims and gauges go on meanwhile)."""
        self._settle()
        with self._room:
            if self._holding():
                self._room.wait(min(1.0, self._until_due()))

    def _until_due(self) -> float:
        if not self._assembly.ids:
            return 1.0
        return max(0.0, self.limits.max_delay - (time.monotonic() - self._assembly.started))

    def _fetch(self) -> None:
        block_ms = max(1, int(min(self._until_due(), 1.0) * 1000))
        if self._unbatched:
            pieces, self._unbatched = self._unbatched, []
        else:
            if not self.redis.reading_ahead():
                self._settle()  # this read may wait: the last batches go on first
            # A full reply sends the next read as it comes in, unless the source holds
            # enough already: so it holds at most max_batches and two reads, and Redis
            # prepares a read while the source frames the last one and batches it.
            pieces = self.redis.read_new(
                self.options.fetch_count, block_ms, self._pieces, ahead=self._may_read_ahead
            )
        for piece in pieces:
            rest: redisentries.Piece | None = piece
            while rest is not None:
                rest, poison = redisentries.extend(
                    self.assembler, self._assembly, rest, self.limits, self.redis.field
                )
                if poison:
                    self._poison(poison)
                if self._assembly.full(self.limits):
                    self._cut()

    def _heartbeat(self, stop: threading.Event) -> None:
        """Refresh the in-flight entries' idle time and their manifests' TTL every
        quarter of ``claim_idle`` (or of ``manifest_ttl``, when shorter)."""
        every = min(self.options.claim_idle, self.options.manifest_ttl) / 4
        while not stop.wait(every):
            try:
                self._refresh_inflight()
            except BrokerError as exc:
                log.debug("source %s: refreshing in-flight entries failed: %s", self.name, exc)

    def _refresh_inflight(self) -> None:
        with self._lock:
            inflight = dict(self._inflight)
        if inflight:
            self.redis.touch(inflight.values())
            self.redis.refresh(inflight)

    def _publish_gauges(self) -> None:
        if self.metrics is None:
            return
        state = self.redis.state()
        if state is None:
            return
        pending, lag = state
        self.metrics.broker_pending.labels(pipeline=self.name).set(pending)
        if lag is not None:
            self.metrics.broker_lag.labels(pipeline=self.name).set(lag)


__all__ = ["ACK_CLOSE_WAIT", "RedisSource"]
