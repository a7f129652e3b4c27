"""How the JetStream source's pulled messages become batches (docs/brokers.md, "NATS
JetStream"): new messages go into the batch in the making, which is cut at the
pipeline's limits, its manifest written into the bucket (refused when another manifest
holds one of its messages: those go with that batch) and handed to the batcher with the
manifest's token; a redelivered message whose manifest exists goes with exactly that
batch, rebuilt from the stream; poison is dead-lettered and terminated.
:class:`~chworkers.daemon.brokers.natsstream.NatsSource` pulls, and answers the daemon.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Unpack

from chworkers.clickhouse.dedup import broker_token
from chworkers.daemon.brokers.assembly import RUN, Assembly, Message, Poison
from chworkers.daemon.brokers.common import SourceArgs, SourceParts
from chworkers.daemon.brokers.natsconsumer import Pulled
from chworkers.daemon.brokers.natslink import ACK, TERM, NatsLink
from chworkers.daemon.brokers.natsmanifests import Manifest, Registry, in_order
from chworkers.daemon.brokers.natsprefix import SettledAcks
from chworkers.daemon.brokers.natsreplies import delivery, sequences
from chworkers.daemon.brokers.options import NatsSourceSettings
from chworkers.daemon.brokers.trouble import Trouble
from chworkers.errors import PoisonMessageError
from chworkers.wording import plural

#: The source's logger, as before its batching moved here (log filters keep working).
log = logging.getLogger("chworkers.daemon.brokers.natsstream")

#: Ranges of manifests just written kept for their batches' submission at most (one
#: lost to an error between the two is forgotten with the oldest).
RANGES_KEPT = 64

#: How long after it was read the consumer's acknowledgement floor may remove manifests.
#: nats-server writes the consumer's state to its file store a moment after it changes
#: (at most every 100 ms); one killed meanwhile starts again from the state it wrote
#: last, its floor lower: the messages in between are delivered again and must find
#: their manifests, else they would be batched anew and inserted twice.
FLOOR_AGE = 10.0

#: A batch ready to be handed on: (token, batch, acknowledgement subjects, rebuilt, and
#: the time.monotonic() from which their ack_wait runs at the latest); an empty token
#: when it is not to be inserted.
Ready = tuple[str, Assembly, list[bytes], bool, float]


class Held:
    """What the batch being put together holds until its manifest is written: its
    messages' payloads and acknowledgement subjects, in the batch's order (its ids'),
    and by when the manifest must be written."""

    def __init__(self, deadline: float = float("inf")) -> None:
        self.payloads: list[bytes] = []
        self.replies: list[bytes] = []
        #: time.monotonic() before which no message here can have been redelivered: the
        #: pull that brought the first was sent ``ack_wait`` before it.
        self.deadline = deadline

    def by_id(self, ids: list[str]) -> tuple[dict[str, Message], dict[str, bytes]]:
        """The messages and their acknowledgement subjects by id (``ids``: the batch's)."""
        messages = [Message(i, p) for i, p in zip(ids, self.payloads, strict=True)]
        return dict(zip(ids, messages, strict=True)), dict(zip(ids, self.replies, strict=True))


class NatsBatching(SourceParts):
    """The part of :class:`~chworkers.daemon.brokers.natsstream.NatsSource` that makes
    batches of what it pulled (the module's docstring)."""

    log = log

    def __init__(
        self, *, options: NatsSourceSettings, consumer: str, **common: Unpack[SourceArgs]
    ) -> None:
        super().__init__(**common)
        self.options = options
        self.label = consumer  # this daemon, in the manifests it writes
        self.link = NatsLink(options, self.name, consumer)
        self.trouble = Trouble(self.name, self.link.where)
        self.stream, self.consumer = options.stream, options.consumer
        #: token -> acknowledgement subjects of its messages this daemon holds, until
        #: the batch is acknowledged.
        self._inflight: dict[str, list[bytes]] = {}
        #: token -> time.monotonic() since which those messages' ack_wait runs (at the
        #: latest): their delivery, or the last in-progress note for them.
        self._since: dict[str, float] = {}
        self._room = threading.Condition(self._lock)  # a batch acknowledged
        self._held = Held()
        #: The consumer's acknowledgement floor (a stream sequence) as read at least
        #: FLOOR_AGE ago (:meth:`_seen_floor`): what removes manifests.
        self._floor = 0
        self._floors: collections.deque[tuple[float, int]] = collections.deque()
        self._rows_per_message = 1.0
        #: token -> the ranges of the manifest just written for a batch this source
        #: made (its ids': found once, for the manifest and the batch's meta).
        self._ranges: dict[str, list[list[int]]] = {}
        #: ack_policy = "all": messages are acknowledged as a settled prefix
        #: (natsprefix.py), never one by one; poison is settled, not terminated.
        self._all = options.ack_policy == "all"
        self._settled = SettledAcks(f"source {self.name}")

    def _take_in(self, pulled: list[Pulled]) -> None:
        """Pulled messages into batches: new ones into the batch in the making, then
        redelivered ones with their manifest's batch (all those of the pull at once: one
        read of the manifests); the batches cut meanwhile are handed on."""
        deadline = min(sent for _, _, sent, _ in pulled) + self.options.ack_wait
        runs: list[tuple[list[str], list[bytes], list[bytes]]] = []
        again: list[Message] = []
        again_replies: dict[str, bytes] = {}
        for replies, payloads, _sent, seqs in pulled:
            ids, redelivered = seqs if seqs is not None else sequences(replies)
            if not redelivered:  # all delivered for the first time: the common case
                runs.append((ids, payloads, replies))
                continue
            for i in redelivered:
                again.append(Message(ids[i], payloads[i], delivery(replies[i])[1]))
                again_replies[ids[i]] = replies[i]
            skip = set(redelivered)
            fresh = [i for i in range(len(ids)) if i not in skip]
            runs.append(
                ([ids[i] for i in fresh], [payloads[i] for i in fresh], [replies[i] for i in fresh])
            )
        ready: list[Ready] = []
        for ids, payloads, replies in runs:
            if ids:
                ready += self._take(ids, payloads, replies, deadline)
        if again:  # after the new ones: their batches go before any rebuild's reads
            if ready:
                if self._assembly.ids:
                    ready.append(self._cut())
                self._submit_all(ready)
                ready = []
            ready += self._redelivered(again, again_replies, deadline)
        if ready and self._assembly.ids:
            # Nothing unwritten is held while the batcher may block (the manifest must be
            # written before ack_wait runs out): the batch in the making goes now too.
            ready.append(self._cut())
        self._submit_all(ready)

    def _take(
        self, ids: list[str], payloads: list[bytes], replies: list[bytes], deadline: float
    ) -> list[Ready]:
        """Add messages (``replies``: their acknowledgement subjects) to the batch in the
        making, in runs of up to :data:`~chworkers.daemon.brokers.assembly.RUN` (a run is
        read several times: fastest while it stays in the CPU's cache); returns the
        batches cut meanwhile."""
        ready: list[Ready] = []
        for first in range(0, len(ids), RUN):
            run = slice(first, first + RUN)
            records = self.assembler.lines(payloads[run])
            if records is None:
                ready += self._take_framed(ids[run], payloads[run], replies[run], deadline)
            else:
                ready += self._take_lines(ids[run], payloads[run], replies[run], records, deadline)
        return ready

    def _take_lines(
        self,
        ids: list[str],
        payloads: list[bytes],
        replies: list[bytes],
        records: bytes,
        deadline: float,
    ) -> list[Ready]:
        """:meth:`_take` for a run of whole lines (``records``: their payloads joined)."""
        ready: list[Ready] = []
        start = 0
        while start < len(ids):
            if not self._assembly.ids:
                self._held.deadline = deadline
            whole = start == 0
            taken = self.assembler.extend_lines(
                self._assembly,
                ids if whole else ids[start:],
                payloads if whole else payloads[start:],
                self.limits,
                records if whole else None,
            )
            held = self._held
            held.deadline = min(held.deadline, deadline)
            held.payloads += payloads[start : start + taken]
            held.replies += replies[start : start + taken]
            start += taken
            self._count_rows()
            if self._assembly.full(self.limits):
                ready.append(self._cut())
            elif not taken:
                break
        return ready

    def _take_framed(
        self, ids: list[str], payloads: list[bytes], replies: list[bytes], deadline: float
    ) -> list[Ready]:
        """:meth:`_take` for messages that need framing (a format with quotes, a message
        without its last newline, an empty one, poison)."""
        messages = [Message(i, p) for i, p in zip(ids, payloads, strict=True)]
        ready: list[Ready] = []
        start = 0
        while start < len(messages):
            if not self._assembly.ids:
                self._held.deadline = deadline
            held = self._held
            start_at = start
            start, poison = self.assembler.extend(self._assembly, messages, start, self.limits)
            held.deadline = min(held.deadline, deadline)
            bad = set()
            if poison:
                self._poison(poison, dict(zip(ids, replies, strict=True)))
                bad = {p.message.id for p in poison}
            for at in range(start_at, start):
                if ids[at] not in bad:
                    held.payloads.append(payloads[at])
                    held.replies.append(replies[at])
            self._count_rows()
            if self._assembly.full(self.limits):
                ready.append(self._cut())
        return ready

    def _count_rows(self) -> None:
        """Rows per message so far (a pull asks for what fills the batch in the making)."""
        if self._assembly.rows:
            self._rows_per_message = max(1.0, self._assembly.rows / len(self._assembly.ids))

    def _cut(self) -> Ready:
        """The batch in the making, its manifest written: ``(token, batch, replies,
        rebuilt)``; an empty token when it is not to be inserted."""
        batch, self._assembly = self._assembly, Assembly()
        held, self._held = self._held, Held()
        return self._write_manifest(batch, held)

    def _write_manifest(self, batch: Assembly, held: Held) -> Ready:
        replies = held.replies  # in the batch's order
        if not batch.ids:
            return "", batch, [], False, 0.0
        if not batch.rows:  # nothing to insert: empty messages
            if self._all:
                self._settle(batch.ids, replies)
            else:
                self.link.send(replies, ACK)
                self._acked(len(replies))
            return "", batch, [], False, 0.0
        # Room for the manifest's write (compare-and-set, maybe retried) before the deadline.
        margin = self.options.ack_wait / 8
        if time.monotonic() > held.deadline - margin:
            log.warning(
                "source %s: a batch of %s was ready too late to be this daemon's "
                "(ack_wait = %s s ran out): not inserted, JetStream redelivers its messages",
                self.name,
                plural(len(batch.ids), "message"),
                self.options.ack_wait,
            )
            return "", batch, [], False, 0.0
        ids, ranges = in_order(batch.ids)
        token = broker_token("nats", self.stream, self.consumer, ids)
        acks = end_acks(batch.ids, replies, ranges) if self._all else []
        manifest = Manifest(token, ranges, time.time(), self.label, acks=acks)
        conflicts = self.link.call(self.link.manifests().register(manifest, self._floor))
        if conflicts:
            # Some of these messages are in another daemon's manifest (it held them
            # before us and wrote late): they go with that batch, the rest in a new one.
            log.warning(
                "source %s: %s of a batch in another batch's manifest already go with it",
                self.name,
                plural(len(conflicts), "message"),
            )
            messages, by_id = held.by_id(batch.ids)
            taken = [messages[str(s)] for s in sorted(conflicts)]
            ready = self._redelivered(taken, by_id, held.deadline, count=False)
            rest = [i for i in batch.ids if int(i) not in conflicts]
            again, poison = self.assembler.rebuild(rest, messages)
            assert not poison  # framed once already
            left = Held(held.deadline)
            left.payloads = [messages[i].payload or b"" for i in again.ids]
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
        self._ranges[token] = ranges
        if len(self._ranges) > RANGES_KEPT:  # a batch lost before it was submitted
            del self._ranges[next(iter(self._ranges))]
        return token, batch, replies, False, held.deadline - self.options.ack_wait

    def _submit_all(self, ready: list[Ready]) -> None:
        for token, batch, replies, rebuilt, since in ready:
            if token:
                self._submit(token, batch, replies, since, rebuilt=rebuilt)

    def _submit(
        self, token: str, batch: Assembly, replies: list[bytes], since: float, *, rebuilt: bool
    ) -> None:
        with self._lock:
            self._hold(token, replies, since)
        if not batch.rows:  # a rebuilt batch whose messages the stream no longer has
            with self._lock:
                held = self._inflight.pop(token, [])
                self._since.pop(token, None)
                self._room.notify_all()
            if not self._all:
                self.link.send(held, ACK)
            registry = self.link.call(self.link.manifests().mark_done(token, self._floor))
            if self._all:
                self._advance(registry)
            self._acked(len(held))
            return
        # Its sequences: to write its manifest again if it expired (NatsSource.still_open).
        seqs = self._ranges.pop(token, None) or in_order(batch.ids)[1]
        meta = {"broker": {"kind": "nats", "token": token, "rebuilt": rebuilt, "seqs": seqs}}
        self._spool(token, batch, meta)

    def _hold(self, token: str, replies: list[bytes], since: float) -> None:
        """Messages of batch ``token`` held until it is acknowledged (under the lock)."""
        self._inflight.setdefault(token, []).extend(replies)
        self._since[token] = min(self._since.get(token, since), since)

    # -- redeliveries ---------------------------------------------------------------------

    def _redelivered(
        self,
        messages: list[Message],
        replies: dict[str, bytes],
        deadline: float,
        *,
        count: bool = True,
    ) -> list[Ready]:
        """Messages delivered before (to a daemon that died or hung): those of a manifest
        go with exactly its batch (rebuilt from the stream, or acknowledged when it is
        done); the others are batched anew. Returns the batches to submit."""
        if count and self.metrics is not None:
            self.metrics.broker_redeliveries.labels(pipeline=self.name).inc(len(messages))
        registry = self.link.call(self.link.manifests().load())
        owners = registry.owners(int(m.id) for m in messages)
        # Settled messages come back until the prefix passes them (ack_policy = "all"):
        # their deliveries are no reason to give up on them.
        settled = {
            m.id for m in messages if self._all and getattr(owners.get(int(m.id)), "done", False)
        }
        keep = [m for m in messages if m.id in settled or not self._too_often(m, replies)]
        again: dict[int, str] = {}  # settled messages' fresh acknowledgement subjects
        fresh: list[Message] = []
        groups: dict[str, tuple[Manifest, list[Message]]] = {}
        for message in keep:
            owner = owners.get(int(message.id))
            if owner is None:
                fresh.append(message)
            else:
                groups.setdefault(owner.token, (owner, []))[1].append(message)
        ready: list[Ready] = []
        rebuild: list[Manifest] = []
        for token, (manifest, held) in groups.items():
            mine = [replies[m.id] for m in held]
            if manifest.done and self._all:
                again.update((int(m.id), replies[m.id].decode()) for m in held)
                continue
            if manifest.done:
                self.link.send(mine, ACK)  # inserted already: nothing to rebuild
                self._acked(len(mine))
                continue
            with self._lock:
                if token not in self._inflight:  # else ours, in flight: acknowledged with it
                    rebuild.append(manifest)
                # Held from now: in-progress notes keep them while the batch is rebuilt.
                self._hold(token, mine, deadline - self.options.ack_wait)
        if again:  # inserted already: acknowledged with the prefix they are in
            self._advance(registry, again)
            self._acked(len(again))
        if fresh:
            self._assembly.mixed = True
            ready += self._take_framed(
                [m.id for m in fresh],
                [m.payload or b"" for m in fresh],
                [replies[m.id] for m in fresh],
                deadline,
            )
        if rebuild:
            # A rebuild reads its batch back from the stream message by message (seconds
            # for a large one): what is ready and the batch in the making go first, their
            # manifests written while their ack_wait runs (else they would be too late,
            # not inserted and redelivered, again and again after an outage).
            if self._assembly.ids:
                ready.append(self._cut())
            self._submit_all(ready)
            ready = []
            given_up = {m.id for m in messages} - {m.id for m in keep}
            ready += [self._rebuild(manifest, given_up) for manifest in rebuild]
        return ready

    def _rebuild(self, manifest: Manifest, given_up: set[str]) -> Ready:
        seqs = manifest.seqs()
        stored = self.link.call(self.link.wire().read(seqs))
        ids = [str(s) for s in seqs]
        batch = self._rebuilt(
            manifest.token, ids, stored, given_up, unit="message", gone="its retention?"
        )
        return manifest.token, batch, [], True, float("inf")

    def _too_often(self, message: Message, replies: dict[str, bytes]) -> bool:
        limit = self.options.max_deliver
        if not limit or message.deliveries <= limit:
            return False
        error = PoisonMessageError(
            f"message {message.id} was delivered {message.deliveries} times (max_deliver = {limit})"
        )
        self._poison([Poison(message, error)], replies)
        return True

    # -- poison, acknowledgements ----------------------------------------------------------

    def _poison(self, poison: list[Poison], replies: dict[str, bytes]) -> None:
        """Dead-letter poison messages, then terminate them: never redelivered (with
        ``ack_policy = "all"`` a +TERM would acknowledge every message before it too:
        they are settled instead, and acknowledged with the prefix)."""
        self._dead_letter(poison, "")
        if self._all:
            ids = [p.message.id for p in poison]
            self._settle(ids, [replies[i] for i in ids])
            return
        self.link.send([replies[p.message.id] for p in poison], TERM)
        self._acked(len(poison))

    # -- ack_policy = "all" ------------------------------------------------------------------

    def _advance(self, registry: Registry, fresh: dict[int, str] | None = None) -> None:
        """Acknowledge the settled prefix of ``registry`` (natsprefix.py)."""
        self._seen_floor(self.link.call(self._settled.advance(self.link.wire(), registry, fresh)))

    def _settle(self, ids: list[str], replies: list[bytes]) -> None:
        """Messages that go into no insert (dead-lettered, empty), written as a done
        manifest of their own: settled, acknowledged with the prefix."""
        ordered, ranges = in_order(ids)
        token = broker_token("nats-settled", self.stream, self.consumer, ordered)
        manifest = Manifest(
            token, ranges, time.time(), self.label, acks=end_acks(ids, replies, ranges)
        )
        self._advance(self.link.call(self.link.manifests().settle(manifest, self._floor)))
        self._acked(len(ids))

    def _seen_floor(self, floor: int) -> None:
        """The consumer's floor as just read from nats-server: taken as the floor that
        removes manifests once :data:`FLOOR_AGE` has passed. A floor lower than one read
        before is nats-server's state lost (killed before it wrote it): those read
        before are forgotten, and the manifests above the lower one kept."""
        now = time.monotonic()
        with self._lock:
            if (self._floors and floor < self._floors[-1][1]) or floor < self._floor:
                log.warning(
                    "source %s: the consumer's acknowledgement floor went back to %d "
                    "(nats-server restarted without its latest state): the messages above "
                    "it are delivered again, and go with their batches' manifests",
                    self.name,
                    floor,
                )
                self._floors.clear()
                self._floor = min(self._floor, floor)
            self._floors.append((now, floor))
            while self._floors and self._floors[0][0] <= now - FLOOR_AGE:
                self._floor = max(self._floor, self._floors.popleft()[1])

    def _acked(self, count: int) -> None:
        if self.metrics is not None and count:
            self.metrics.broker_acked.labels(pipeline=self.name).inc(count)


def end_acks(ids: list[str], replies: list[bytes], ranges: list[list[int]]) -> list[str]:
    """The acknowledgement subject of each range's last message (``ids`` and
    ``replies``: a batch's messages, in the same order)."""
    if len(ranges) == 1 and ids and ids[-1] == str(ranges[0][1]):
        return [replies[-1].decode()]  # one pull's messages in order: the usual batch
    at = dict(zip(ids, replies, strict=True))
    return [at[str(last)].decode() if str(last) in at else "" for _, last in ranges]


__all__ = ["Held", "NatsBatching", "Ready", "end_acks"]
