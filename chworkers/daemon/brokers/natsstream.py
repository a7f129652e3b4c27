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

from chworkers.clickhouse.dedup import broker_token
from chworkers.daemon.brokers.assembly import Assembly, Message, Poison
from chworkers.daemon.brokers.common import (
    GAUGES_EVERY,
    RETRY_INITIAL,
    RETRY_MAX,
    SourceArgs,
    SourceParts,
)
from chworkers.daemon.brokers.natsconsumer import Pulled
from chworkers.daemon.brokers.natslink import ACK, TERM, NatsLink
from chworkers.daemon.brokers.natsmanifests import Manifest, to_ranges
from chworkers.daemon.brokers.options import NatsSourceSettings
from chworkers.daemon.brokers.trouble import Trouble
from chworkers.daemon.spool import SpooledBatch
from chworkers.errors import BrokerError, PoisonMessageError

log = logging.getLogger(__name__)


def delivery(reply: str) -> tuple[int, int]:
    """``(stream sequence, times delivered)`` from a message's reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...``; with a domain and an
    account hash in the newer form, two tokens later)."""
    tokens = reply.split(".")
    at = 4 if len(tokens) == 9 else 6
    return int(tokens[at + 1]), int(tokens[at])


class Held:
    """Messages taken for the batch being put together, until its manifest is written:
    the messages and their acknowledgement subjects, in the batch's order (its ids'),
    and by when the manifest must be written."""

    def __init__(self, deadline: float = float("inf")) -> None:
        self.messages: list[Message] = []
        self.replies: list[str] = []
        #: time.monotonic() before which no message here can have been redelivered: the
        #: pull that brought the first was sent ``ack_wait`` before it.
        self.deadline = deadline

    def by_id(self) -> tuple[dict[str, Message], dict[str, str]]:
        """The messages and their acknowledgement subjects by id."""
        ids = [m.id for m in self.messages]
        return dict(zip(ids, self.messages, strict=True)), dict(zip(ids, self.replies, strict=True))


class NatsSource(SourceParts):
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
        super().__init__(**common)
        self.options = options
        self._in_flight = in_flight
        self._room = threading.Condition(self._lock)  # a batch acknowledged
        self.label = consumer  # this daemon, in the manifests it writes
        self.link = NatsLink(options, self.name, consumer)
        self.trouble = Trouble(self.name, self.link.where)
        self.stream, self.consumer = options.stream, options.consumer
        #: token -> acknowledgement subjects of its messages this daemon holds, until
        #: the batch is acknowledged.
        self._inflight: dict[str, list[str]] = {}
        self._unsent: set[str] = set()  # tokens of batches before their first attempt
        self._held = Held()
        self._floor = 0  # the consumer's acknowledgement floor (a stream sequence)
        self._rows_per_message = 1.0
        #: The pull sent while the last one's messages are taken in (None: none).
        self._ahead: concurrent.futures.Future[list[Pulled]] | None = None
        self.link.keep_alive(self._inflight_replies)

    # -- the daemon's side ----------------------------------------------------------------

    def still_open(self, batch: SpooledBatch) -> bool:
        """Whether the batch's manifest is still there (else all its messages were
        acknowledged, or it expired): a batch is tried again only if it is.

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
        return token in registry.manifests

    def complete(self, batch: SpooledBatch) -> None:
        """ClickHouse confirmed the batch: acknowledge the messages this daemon holds; a
        rebuilt batch's manifest is marked done, so its other messages are acknowledged by
        whoever receives them."""
        broker = batch.meta["broker"]
        token = str(broker["token"])
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
            self._room.notify_all()
        if late:
            self.link.send(late, ACK)
        self._acked(len(replies) + len(late))

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
        return (self._in_flight() if self._in_flight is not None else 6) + 2

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

    def _take_in(self, pulled: list[Pulled]) -> None:
        """Pulled messages into batches: new ones into the batch in the making,
        redelivered ones with their manifest's batch; the batches cut meanwhile are
        handed on."""
        deadline = min(sent for _, _, sent in pulled) + self.options.ack_wait
        fresh: list[Message] = []
        fresh_replies: list[str] = []
        again: list[Message] = []
        replies: dict[str, str] = {}
        for reply, data, _sent in pulled:
            # delivery(reply), inlined: this loop runs for every message
            tokens = reply.split(".")
            at = 4 if len(tokens) == 9 else 6
            if tokens[at] == "1":
                fresh.append(Message(tokens[at + 1], data))
                fresh_replies.append(reply)
            else:
                again.append(Message(tokens[at + 1], data, int(tokens[at])))
                replies[tokens[at + 1]] = reply
        ready: list[tuple[str, Assembly, list[str], bool]] = []
        if again:
            ready += self._redelivered(again, replies, deadline)
        ready += self._take(fresh, fresh_replies, deadline)
        if ready and self._assembly.ids:
            # Nothing unwritten is held while the batcher may block (the manifest must be
            # written before ack_wait runs out): the batch in the making goes now too.
            ready.append(self._cut())
        self._submit_all(ready)

    def _take(
        self, messages: list[Message], replies: list[str], deadline: float
    ) -> list[tuple[str, Assembly, list[str], bool]]:
        """Add messages (``replies``: their acknowledgement subjects, in their order) to
        the batch in the making; returns the batches cut meanwhile."""
        ready: list[tuple[str, Assembly, list[str], bool]] = []
        start = 0
        held = self._held
        while start < len(messages):
            if not self._assembly.ids:
                held.deadline = deadline
            before = len(self._assembly.ids)
            start_at = start
            start, poison = self.assembler.extend(self._assembly, messages, start, self.limits)
            held.deadline = min(held.deadline, deadline)
            if poison:
                by_id = {m.id: r for m, r in zip(messages, replies, strict=True)}
                self._poison(poison, by_id)
                bad = {p.message.id for p in poison}
                for message in messages[start_at:start]:
                    if message.id not in bad:
                        held.messages.append(message)
                        held.replies.append(by_id[message.id])
            else:
                held.messages += messages[start_at:start]
                held.replies += replies[start_at:start]
            if len(self._assembly.ids) > before and self._assembly.rows:
                self._rows_per_message = max(1.0, self._assembly.rows / len(self._assembly.ids))
            if self._assembly.full(self.limits):
                ready.append(self._cut())
                held = self._held
        return ready

    def _cut(self) -> tuple[str, Assembly, list[str], bool]:
        """The batch in the making, its manifest written: ``(token, batch, replies,
        rebuilt)``; an empty token when it is not to be inserted."""
        batch, self._assembly = self._assembly, Assembly()
        held, self._held = self._held, Held()
        return self._write_manifest(batch, held)

    def _write_manifest(self, batch: Assembly, held: Held) -> tuple[str, Assembly, list[str], bool]:
        replies = held.replies  # in the batch's order
        if not batch.ids:
            return "", batch, [], False
        if not batch.rows:
            self.link.send(replies, ACK)  # nothing to insert: empty messages
            self._acked(len(replies))
            return "", batch, [], False
        # Room for the manifest's write (compare-and-set, maybe retried) before the deadline.
        margin = self.options.ack_wait / 8
        if time.monotonic() > held.deadline - margin:
            log.warning(
                "source %s: a batch of %d messages was ready too late to be this daemon's "
                "(ack_wait = %s s ran out): not inserted, JetStream redelivers its messages",
                self.name,
                len(batch.ids),
                self.options.ack_wait,
            )
            return "", batch, [], False
        seqs = sorted(int(i) for i in batch.ids)
        token = broker_token("nats", self.stream, self.consumer, [str(s) for s in seqs])
        manifest = Manifest(token, to_ranges(seqs), time.time(), self.label)
        conflicts = self.link.call(self.link.manifests().register(manifest, self._floor))
        if conflicts:
            # Some of these messages are in another daemon's manifest (it held them
            # before us and wrote late): they go with that batch, the rest in a new one.
            log.warning(
                "source %s: %d messages of a batch are in another batch's manifest already; "
                "they go with it",
                self.name,
                len(conflicts),
            )
            messages, by_id = held.by_id()
            taken = [messages[str(s)] for s in sorted(conflicts)]
            ready = self._redelivered(taken, by_id, held.deadline, count=False)
            rest = [i for i in batch.ids if int(i) not in conflicts]
            again, poison = self.assembler.rebuild(rest, messages)
            assert not poison  # framed once already
            left = Held(held.deadline)
            left.messages = [messages[i] for i in again.ids]
            left.replies = [by_id[i] for i in again.ids]
            result = self._write_manifest(again, left)
            self._submit_all(ready)
            return result
        if time.monotonic() > held.deadline:
            log.warning(
                "source %s: the manifest of batch %s was written after ack_wait ran out: "
                "if another daemon inserted some of its messages meanwhile, they are in "
                "ClickHouse twice (docs/brokers.md)",
                self.name,
                token,
            )
        return token, batch, replies, False

    def _submit_all(self, ready: list[tuple[str, Assembly, list[str], bool]]) -> None:
        for token, batch, replies, rebuilt in ready:
            if token:
                self._submit(token, batch, replies, rebuilt=rebuilt)

    def _submit(self, token: str, batch: Assembly, replies: list[str], *, rebuilt: bool) -> None:
        with self._lock:
            self._inflight.setdefault(token, []).extend(replies)
        if not batch.rows:  # a rebuilt batch whose messages the stream no longer has
            with self._lock:
                held = self._inflight.pop(token, [])
                self._room.notify_all()
            self.link.send(held, ACK)
            self.link.call(self.link.manifests().mark_done(token, self._floor))
            self._acked(len(held))
            return
        meta = {"broker": {"kind": "nats", "token": token, "rebuilt": rebuilt}}
        with self._lock:
            self._unsent.add(token)
        self.batcher.add(
            self.table,
            self.assembler.payload(batch),
            batch.rows,
            format=self.format,
            pipeline=self.name,
            settings=self.settings,
            meta=meta,
            limits=self.limits,
            retry=True,  # waits until the spool takes it
            token=token,
            # JetStream holds the messages until they are acknowledged and the manifest
            # rebuilds the batch: no copy on disk (docs/brokers.md, "The local spool").
            memory=True,
        )
        self.rows += batch.rows

    # -- redeliveries ---------------------------------------------------------------------

    def _redelivered(
        self,
        messages: list[Message],
        replies: dict[str, str],
        deadline: float,
        *,
        count: bool = True,
    ) -> list[tuple[str, Assembly, list[str], bool]]:
        """Messages delivered before (to a daemon that died or hung): those of a manifest
        go with exactly its batch (rebuilt from the stream, or acknowledged when it is
        done); the others are batched anew. Returns the batches to submit."""
        if count and self.metrics is not None:
            self.metrics.broker_redeliveries.labels(pipeline=self.name).inc(len(messages))
        keep = [m for m in messages if not self._too_often(m, replies)]
        registry = self.link.call(self.link.manifests().load())
        owners = registry.owners(int(m.id) for m in keep)
        fresh: list[Message] = []
        groups: dict[str, tuple[Manifest, list[Message]]] = {}
        for message in keep:
            owner = owners.get(int(message.id))
            if owner is None:
                fresh.append(message)
            else:
                groups.setdefault(owner.token, (owner, []))[1].append(message)
        ready: list[tuple[str, Assembly, list[str], bool]] = []
        for token, (manifest, held) in groups.items():
            mine = [replies[m.id] for m in held]
            if manifest.done:
                self.link.send(mine, ACK)  # inserted already: nothing to rebuild
                self._acked(len(mine))
                continue
            with self._lock:
                if token in self._inflight:  # ours, in flight: acknowledged with it
                    self._inflight[token].extend(mine)
                    continue
            ready.append(self._rebuild(manifest, {m.id for m in messages} - {m.id for m in keep}))
            with self._lock:
                self._inflight.setdefault(token, []).extend(mine)
        if fresh:
            self._assembly.mixed = True
            ready += self._take(fresh, [replies[m.id] for m in fresh], deadline)
        return ready

    def _rebuild(
        self, manifest: Manifest, given_up: set[str]
    ) -> tuple[str, Assembly, list[str], bool]:
        seqs = manifest.seqs()
        stored = self.link.call(self.link.wire().read(seqs))
        ids = [str(s) for s in seqs]
        batch, poison = self.assembler.rebuild(
            ids, {i: m for i, m in stored.items() if i not in given_up}
        )
        missing = len(ids) - len(stored)
        if missing:
            log.warning(
                "source %s: %d messages of batch %s are no longer in the stream (its "
                "retention?); the batch is rebuilt without them",
                self.name,
                missing,
                manifest.token,
            )
        if poison:
            self._dead_letter(poison, manifest.token)
        log.info(
            "source %s: rebuilding batch %s (%d messages) from its manifest",
            self.name,
            manifest.token,
            len(ids),
        )
        return manifest.token, batch, [], True

    def _too_often(self, message: Message, replies: dict[str, str]) -> bool:
        limit = self.options.max_deliver
        if not limit or message.deliveries <= limit:
            return False
        error = PoisonMessageError(
            f"message {message.id} was delivered {message.deliveries} times (max_deliver = {limit})"
        )
        self._poison([Poison(message, error)], replies)
        return True

    # -- poison, acknowledgements ----------------------------------------------------------

    def _poison(self, poison: list[Poison], replies: dict[str, str]) -> None:
        """Dead-letter poison messages, then terminate them: never redelivered."""
        self._dead_letter(poison, "")
        self.link.send([replies[p.message.id] for p in poison], TERM)
        self._acked(len(poison))

    def _dead_letter(self, poison: list[Poison], token: str) -> None:
        for p in poison:
            log.warning("source %s: %s", self.name, p.error)
            if self.on_error is not None:
                self.on_error(self.name, str(p.error))
        self.dead_letter([(p.message.payload or b"", p.error) for p in poison], token)

    def _acked(self, count: int) -> None:
        if self.metrics is not None and count:
            self.metrics.broker_acked.labels(pipeline=self.name).inc(count)

    def _inflight_replies(self) -> list[str]:
        with self._lock:
            return [r for batch in self._inflight.values() for r in batch]

    def close(self) -> None:
        """The daemon stopped: no more in-progress notes, the connection closed (batches
        still in flight are redelivered after ack_wait, or replayed from the spool)."""
        self.link.close()

    def _publish_gauges(self) -> None:
        lag, pending, floor = self.link.call(self.link.wire().state())
        self._floor = max(self._floor, floor)
        if self.metrics is not None:
            self.metrics.broker_pending.labels(pipeline=self.name).set(pending)
            self.metrics.broker_lag.labels(pipeline=self.name).set(lag)


__all__ = ["NatsSource", "delivery"]
