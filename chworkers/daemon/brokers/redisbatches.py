"""How the Redis source's entries become batches (docs/brokers.md, "A batch's life"): new
entries go into the batch in the making, which is cut at the pipeline's limits, its
manifest sent beside the stream (the verdict taken once Redis wrote it: the batch goes on
only if all its entries are still this consumer's) and handed to the batcher with the
manifest's token; entries claimed from a dead or stuck consumer (``XAUTOCLAIM``) whose
manifest lives rebuild exactly that batch, the others are batched anew; poison is
dead-lettered and acknowledged. :class:`~chworkers.daemon.brokers.redisstream.RedisSource`
reads, and answers the daemon.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Unpack

from chworkers.clickhouse.dedup import broker_token
from chworkers.daemon.brokers import redisentries
from chworkers.daemon.brokers.assembly import Assembly, Message, Poison
from chworkers.daemon.brokers.common import SourceArgs, SourceParts
from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisacks import Acknowledger
from chworkers.daemon.brokers.redisclient import check_files, check_url, display_url, entry_order
from chworkers.daemon.brokers.redisgroup import StreamGroup
from chworkers.daemon.brokers.redismanifests import SentManifest
from chworkers.daemon.brokers.trouble import Trouble
from chworkers.errors import BrokerError, PoisonMessageError
from chworkers.wording import plural

#: The source's logger, as before its batching moved here (log filters keep working).
log = logging.getLogger("chworkers.daemon.brokers.redisstream")

#: Manifests sent whose verdict is not taken yet, at most: a read of ``fetch_count``
#: entries often makes two batches or more, whose manifests then go to Redis together.
MANIFESTS_AHEAD = 2


class RedisBatching(SourceParts):
    """The part of :class:`~chworkers.daemon.brokers.redisstream.RedisSource` that makes
    batches of what it read or claimed (the module's docstring)."""

    log = log

    def __init__(
        self, *, options: RedisSourceSettings, consumer: str, **common: Unpack[SourceArgs]
    ) -> None:
        super().__init__(**common)
        self.options = options
        self._room = threading.Condition(self._lock)  # a batch acknowledged
        self.consumer = options.consumer or consumer
        self._group: StreamGroup | None = None
        self._group_lock = threading.Lock()
        check_files(options, f"pipeline {self.name!r}")  # a file it cannot use: now
        if options.cluster:
            check_url(options, f"pipeline {self.name!r}")
        else:  # a plain client connects on first use: made now, only a bad URL fails
            self._group = StreamGroup(options, self.consumer, f"pipeline {self.name!r}")
        self.trouble = Trouble(self.name, f"redis {display_url(options.url)}")
        #: Acknowledges inserted batches in a thread of its own (redisacks.py).
        self._acks = Acknowledger(
            self.name,
            lambda batches: self.redis.complete_many(batches),
            self._acked,
            Trouble(self.name, f"redis {display_url(options.url)}"),
        )
        self._inflight: dict[str, list[str]] = {}  # token -> ids, until acknowledged
        self._claim_cursor = "0-0"
        #: Entries read and not batched yet (a claim took the reply of a read sent ahead).
        self._unbatched: list[redisentries.Piece] = []
        #: Batches whose manifest was sent, oldest first, until their verdict is taken.
        self._sent: deque[tuple[str, Assembly, SentManifest]] = deque()
        #: The reads' connection last seen (:meth:`_new_only`), and while reads on it may
        #: deliver again entries this source holds: up to which id.
        self._connection = 0
        self._recheck_to: str | None = None

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

    def _held(self) -> set[str]:
        """The ids of every entry this source holds: in the batch in the making, read and
        not batched yet, in the batch whose manifest was sent, in flight."""
        with self._lock:
            held = {i for ids in self._inflight.values() for i in ids}
        held.update(self._assembly.ids)
        for piece in self._unbatched:
            held.update(redisentries.piece_ids(piece))
        for _token, batch, _manifest in self._sent:
            held.update(batch.ids)
        return held

    def _pieces(self, entries: list[redisentries.Entry]) -> list[redisentries.Piece]:
        """A read's entries as the source keeps them until it batches them: those it does
        not hold already (:meth:`_new_only`), in pieces (:func:`redisentries.pieces`)."""
        return redisentries.pieces(self.assembler, self._new_only(entries), self.redis.field)

    def _new_only(self, entries: list[redisentries.Entry]) -> list[redisentries.Entry]:
        """The entries of a read of new ones (``XREADGROUP ... >``) less those this source
        holds already.

        A Redis that lost its last writes (a failover to a replica that had not had them
        yet, a restart) may have lost the delivery of entries it had sent this consumer:
        they are new to the group again, and a read delivers them once more. Batched
        beside the copy the source holds, their rows would be inserted twice (the
        manifest's check cannot tell: every id is pending for this consumer again). Only
        the reads on a new connection can (Redis loses writes only with the connections
        that saw them), and only until one of them passes the highest id held when it was
        opened: reads of new entries come in the stream's order."""
        connection = self.redis.connection()
        if connection != self._connection:
            self._connection = connection
            held = self._held()
            self._recheck_to = max(held, key=entry_order) if held else None
        if self._recheck_to is None or not entries:
            return entries
        held = self._held()
        kept = [entry for entry in entries if redisentries.entry_id(entry) not in held]
        if len(kept) < len(entries):
            log.warning(
                "source %s: Redis delivered %s again (it lost their first delivery: a "
                "failover, or a restart that lost its last writes); batched once",
                self.name,
                plural(len(entries) - len(kept), "entry", "entries"),
            )
            if self.metrics is not None:
                self.metrics.broker_redeliveries.labels(pipeline=self.name).inc(
                    len(entries) - len(kept)
                )
        last = redisentries.entry_id(entries[-1])
        if entry_order(last) > entry_order(self._recheck_to):
            self._recheck_to = None
        return kept

    def _claim(self) -> None:
        """Take over entries other consumers left pending for ``claim_idle``."""
        # The claim must know every entry this source holds: the batches it sent, and
        # those of a read sent ahead (idle past claim_idle when the source waited long,
        # so the claim returns them too).
        self._settle()
        self._unbatched += self.redis.take_ahead() or []
        # The batches in flight as the claim runs: their entries are this source's even
        # when the claim returns them (idle: the heartbeat did not touch them yet) and
        # their manifest is gone by the time it is looked up (the batch completed
        # meanwhile, or a failover lost the manifest): never batched anew here.
        with self._lock:
            inflight = list(self._inflight.values())
        self._claim_cursor, claimed = self.redis.claim(self._claim_cursor, self.options.fetch_count)
        if not claimed:
            return
        present = set(self._assembly.ids)
        for piece in self._unbatched:
            present.update(redisentries.piece_ids(piece))
        for ids in inflight:
            present.update(ids)
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
        batch = self._rebuilt(token, ids, stored, given_up, unit="entry", gone="trimmed?")
        self.redis.replicate(token)
        self._hand_on(token, ids, batch, rebuilt=True)

    def _cut(self) -> None:
        """Cut the batch and send its manifest; the batch goes on once Redis wrote it
        (:meth:`_settle`: when ``MANIFESTS_AHEAD`` are sent and not settled yet, the
        oldest first; all of them before a read that waits), so the source batches the
        next entries meanwhile, and Redis writes the manifests of a read's batches
        together (one fsync of its log for all)."""
        if len(self._sent) >= MANIFESTS_AHEAD:
            self._settle(1)  # first: when it fails, the batch stays in the making
        batch, self._assembly = self._assembly, Assembly()
        token = broker_token("redis", self.redis.stream, self.redis.group, batch.ids)
        manifest = self.redis.manifest(token, batch.ids, fresh=not batch.mixed)
        self._sent.append((token, batch, manifest))  # if the send fails: sent at its settle
        self._sent[-1] = (token, batch, self.redis.send(manifest))

    def _settle(self, most: int | None = None) -> None:
        """Take the verdicts on the manifests sent (``most``: on that many, the oldest
        first), in order: each batch goes on, or is dropped when one of its entries is no
        longer this consumer's."""
        for _ in range(len(self._sent) if most is None else min(most, len(self._sent))):
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        token, batch, manifest = self._sent[0]
        try:
            gone = self.redis.verdict(manifest)
            self._sent.popleft()
        except BrokerError:
            # Its reply is lost, or its replicas lag (and the replies of the manifests
            # sent after it, on the same connection, may be lost too): each batch stays,
            # its manifest sent again at its settle (not left pending until a claim).
            self._sent = deque((t, b, m.again()) for t, b, m in self._sent)
            raise
        if gone is not None:
            log.warning(
                "source %s: a batch of %d entries is not inserted: entry %s is not pending "
                "for this consumer any more (claimed by another daemon, which inserts it; "
                "or a failover lost its delivery: it is read again)",
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

    def _ack(self, ids: list[str], token: str) -> None:
        """Acknowledge now, in this thread (poison, a batch with nothing to insert);
        inserted batches are acknowledged by :attr:`_acks`' thread."""
        self._acked([token], self.redis.complete(ids, token))

    def _acked(self, tokens: list[str], acked: int) -> None:
        """Redis took the acknowledgement of the batches ``tokens``: no longer held."""
        with self._room:
            for token in tokens:
                self._inflight.pop(token, None)
                self._unsent.discard(token)
            self._room.notify_all()
        if self.metrics is not None:
            self.metrics.broker_acked.labels(pipeline=self.name).inc(acked)


__all__ = ["MANIFESTS_AHEAD", "RedisBatching"]
