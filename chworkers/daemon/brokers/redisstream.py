"""``source = "redis"``: a Redis Stream through a consumer group, exactly once across
daemons (docs/brokers.md has the design and the failure table).

The source reads entries (``XREADGROUP``), claims those that a dead or stuck consumer
left pending (``XAUTOCLAIM``), cuts batches with the pipeline's limits, writes each
batch's manifest beside the stream, and hands the batch to the batcher with the
manifest's token. The daemon asks :meth:`RedisSource.still_open` before each insert
attempt and calls :meth:`RedisSource.complete` once ClickHouse confirmed it: the entries
are acknowledged and the manifest removed, atomically. The commands themselves are
:class:`~chworkers.daemon.brokers.redisgroup.StreamGroup` 's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Unpack

from chworkers.clickhouse.dedup import broker_token
from chworkers.daemon.brokers import redisentries
from chworkers.daemon.brokers.assembly import Assembly, Message, Poison
from chworkers.daemon.brokers.common import (
    GAUGES_EVERY,
    RETRY_INITIAL,
    RETRY_MAX,
    SourceArgs,
    SourceParts,
)
from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisclient import check_url, display_url, entry_order
from chworkers.daemon.brokers.redisgroup import SentManifest, StreamGroup
from chworkers.daemon.brokers.trouble import Trouble
from chworkers.daemon.spool import SpooledBatch
from chworkers.errors import BrokerError, PoisonMessageError
from chworkers.wording import plural

log = logging.getLogger(__name__)


class RedisSource(SourceParts):
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
        super().__init__(**common)
        self.options = options
        self._in_flight = in_flight
        self._room = threading.Condition(self._lock)  # a batch acknowledged
        self.consumer = options.consumer or consumer
        self._group: StreamGroup | None = None
        self._group_lock = threading.Lock()
        if options.cluster:
            check_url(options, f"pipeline {self.name!r}")
        else:  # a plain client connects on first use: made now, only a bad URL fails
            self._group = StreamGroup(options, self.consumer, f"pipeline {self.name!r}")
        self.trouble = Trouble(self.name, f"redis {display_url(options.url)}")
        self._inflight: dict[str, list[str]] = {}  # token -> ids, until acknowledged
        self._claim_cursor = "0-0"
        #: Entries read and not batched yet (a claim took the reply of a read sent ahead).
        self._unbatched: list[redisentries.Entry] = []
        #: The batch whose manifest was sent last, until its verdict is taken.
        self._sent: tuple[str, Assembly, SentManifest] | None = None

    @property
    def redis(self) -> StreamGroup:
        """The stream's group, connected on first use: a cluster client asks a node for
        the cluster's slots as it is made, and a cluster down when the daemon starts must
        make the source degraded (:class:`BrokerError`, tried again), not the start fail."""
        group = self._group
        if group is None:
            with self._group_lock:
                if self._group is None:
                    self._group = StreamGroup(
                        self.options, self.consumer, f"pipeline {self.name!r}"
                    )
                group = self._group
        return group

    # -- the daemon's side ----------------------------------------------------------------

    def still_open(self, batch: SpooledBatch) -> bool:
        """Whether the batch's manifest is still there (else another daemon completed it,
        or it expired): a batch is tried again, or replayed from the spool, only if it is.

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
        return self.redis.has_manifest(token)

    def complete(self, batch: SpooledBatch) -> None:
        """ClickHouse confirmed the batch: acknowledge its entries, remove its manifest."""
        broker = batch.meta["broker"]
        self._ack(list(broker["ids"]), str(broker["token"]))

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
        return (self._in_flight() if self._in_flight is not None else 6) + 2

    def _holding(self) -> bool:
        """Whether the source holds ``max_batches``."""
        return (self._sent is not None) + len(self._inflight) >= self.max_batches()

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
            entries, self._unbatched = self._unbatched, []
        else:
            if not self.redis.reading_ahead():
                self._settle()  # this read may wait: the last batch goes on first
            # The next read is sent ahead unless the source holds enough already: so it
            # holds at most max_batches and one read, and a batch of many reads (few
            # records per entry) is read with Redis and the source working at once.
            entries = self.redis.read_new(
                self.options.fetch_count, block_ms, ahead=not self._holding()
            )
        start = 0
        while start < len(entries):
            start, poison = redisentries.extend(
                self.assembler, self._assembly, entries, start, self.limits, self.redis.field
            )
            if poison:
                self._poison(poison)
            if self._assembly.full(self.limits):
                self._cut()

    def _take(self, message: Message, present: set[str]) -> None:
        """One claimed entry without a manifest: batched anew (unless it is in the batch
        being put together already: a claim can take back our own idle entries)."""
        if message.id in present:
            return
        present.add(message.id)
        self._assembly.mixed = True
        poison = self.assembler.add(self._assembly, message)
        if poison is not None:
            self._poison([poison])

    def _claim(self) -> None:
        """Take over entries other consumers left pending for ``claim_idle``."""
        # The claim must know every entry this source holds: the batches it sent, and
        # those of a read sent ahead (idle past claim_idle when the source waited long,
        # so the claim returns them too).
        self._settle()
        self._unbatched += self.redis.take_ahead()
        self._claim_cursor, claimed = self.redis.claim(self._claim_cursor, self.options.fetch_count)
        present = set(self._assembly.ids).union(map(redisentries.entry_id, self._unbatched))
        messages = [message for message in claimed if message.id not in present]
        if messages:
            log.info(
                "source %s: claimed %s",
                self.name,
                plural(len(messages), "idle entry", "idle entries"),
            )
            self._redelivered(messages)

    def _redelivered(self, messages: list[Message]) -> None:
        """Claimed or re-read entries: those of a manifest rebuild exactly its batch;
        the others are batched anew."""
        if self.metrics is not None:
            self.metrics.broker_redeliveries.labels(pipeline=self.name).inc(len(messages))
        messages = self.redis.with_deliveries(messages)
        owners = self.redis.live_manifests()
        fresh: list[Message] = []
        manifests: dict[str, list[Message]] = {}
        for message in messages:
            owner = owners.get(message.id)
            if owner is None:
                fresh.append(message)
            else:
                manifests.setdefault(owner[0], []).append(message)
        for token, claimed in manifests.items():
            with self._lock:
                if token in self._inflight:
                    continue  # ours already (our own entries, idle while in flight)
            self._rebuild(token, owners[claimed[0].id][1], claimed)
        fresh.sort(key=lambda m: entry_order(m.id))
        present = set(self._assembly.ids)
        for message in fresh:
            if self._too_often(message):
                continue
            self._take(message, present)
            if self._assembly.full(self.limits):
                self._cut()
                present = set()

    def _rebuild(self, token: str, ids: list[str], claimed: list[Message]) -> None:
        stored = self.redis.entries(ids)
        given_up = {m.id for m in claimed if self._too_often(m, ack=False)}
        batch, poison = self.assembler.rebuild(
            ids, {i: m for i, m in stored.items() if i not in given_up}
        )
        missing = len(ids) - len(stored)
        if missing:
            log.warning(
                "source %s: %d entries of batch %s are no longer in the stream (trimmed?); "
                "the batch is rebuilt without them",
                self.name,
                missing,
                token,
            )
        if poison:
            self._dead_letter(poison, token)
        log.info(
            "source %s: rebuilding batch %s (%d entries) from its manifest",
            self.name,
            token,
            len(ids),
        )
        self._hand_on(token, ids, batch, rebuilt=True)

    def _cut(self) -> None:
        """Cut the batch and send its manifest; the batch goes on once Redis wrote it
        (:meth:`_settle`, at the latest before the next cut or before a read that waits),
        so the source batches the next entries meanwhile."""
        batch, self._assembly = self._assembly, Assembly()
        token = broker_token("redis", self.redis.stream, self.redis.group, batch.ids)
        self._settle()
        self._sent = (
            token,
            batch,
            self.redis.send_manifest(token, batch.ids, ordered=not batch.mixed),
        )

    def _settle(self) -> None:
        """Take the verdict on the last manifest sent: its batch goes on, or is dropped
        when one of its entries is no longer this consumer's."""
        sent, self._sent = self._sent, None
        if sent is None:
            return
        token, batch, manifest = sent
        gone = self.redis.verdict(manifest)
        if gone is not None:
            log.warning(
                "source %s: a batch of %d entries is not inserted: entry %s is not pending "
                "for this consumer any more (claimed by another daemon, which inserts it)",
                self.name,
                len(batch.ids),
                gone,
            )
            return
        self._hand_on(token, batch.ids, batch)

    def _hand_on(
        self, token: str, ids: list[str], batch: Assembly, *, rebuilt: bool = False
    ) -> None:
        with self._lock:
            self._inflight[token] = ids
        if not batch.rows:
            self._ack(ids, token)  # nothing to insert (empty or poison entries only)
            return
        # Rebuilt: a batch of its manifest, which the daemon that wrote it may have inserted.
        meta = {"broker": {"kind": "redis", "token": token, "ids": ids, "rebuilt": rebuilt}}
        self._spool(token, batch, meta)

    # -- poison, acknowledgements ----------------------------------------------------------

    def _too_often(self, message: Message, *, ack: bool = True) -> bool:
        limit = self.options.max_deliver
        if not limit or message.deliveries <= limit:
            return False
        error = PoisonMessageError(
            f"message {message.id} was delivered {message.deliveries} times (max_deliver = {limit})"
        )
        if ack:
            self._poison([Poison(message, error)])
        else:
            self._dead_letter([Poison(message, error)], "")
        return True

    def _poison(self, poison: list[Poison]) -> None:
        """Dead-letter poison entries, then acknowledge them: never redelivered."""
        self._dead_letter(poison, "")
        self._ack([p.message.id for p in poison], "")

    def _dead_letter(self, poison: list[Poison], token: str) -> None:
        for p in poison:
            log.warning("source %s: %s", self.name, p.error)
            if self.on_error is not None:
                self.on_error(self.name, str(p.error))
        self.dead_letter([(p.message.payload or b"", p.error) for p in poison], token)

    def _ack(self, ids: list[str], token: str) -> None:
        acked = self.redis.complete(ids, token)
        with self._room:
            self._inflight.pop(token, None)
            self._unsent.discard(token)
            self._room.notify_all()
        if self.metrics is not None:
            self.metrics.broker_acked.labels(pipeline=self.name).inc(acked)

    def _heartbeat(self, stop: threading.Event) -> None:
        """Refresh the in-flight entries' idle time every ``claim_idle / 4``."""
        while not stop.wait(self.options.claim_idle / 4):
            try:
                self._refresh_inflight()
            except BrokerError as exc:
                log.debug("source %s: refreshing in-flight entries failed: %s", self.name, exc)

    def _refresh_inflight(self) -> None:
        with self._lock:
            batches = list(self._inflight.values())
        if batches:
            self.redis.touch(batches)

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


__all__ = ["RedisSource"]
