"""``ack_policy = "all"``: the JetStream source acknowledges a *settled prefix* of the
stream with one ``+ACK`` instead of one per message (docs/brokers.md, "Acknowledging
everything up to a sequence").

Under JetStream's ``AckAll`` policy an ``+ACK`` to a message acknowledges every message
the consumer delivered up to its stream sequence, whichever daemon holds them. So a
daemon may acknowledge up to ``T`` only when every message up to ``T`` is *settled*:
in a manifest marked done (its batch's insert confirmed, or dead-lettered), already
acknowledged (at or under the consumer's acknowledgement floor, read from the server
each time), or a sequence the consumer never delivers (deleted from the stream, or
outside its filter: asked of the stream). A message pulled by a daemon and not yet in a
manifest is in none of these, so the prefix stops before it: what a daemon that dies
holds is never acknowledged by another, and is redelivered as with explicit
acknowledgements.

The ``+ACK`` goes to the acknowledgement subject of the last message of a range of a
done manifest (manifests keep those subjects, :class:`~chworkers.daemon.brokers.
natsmanifests.Manifest`), or of a redelivered message just received: any daemon may
send it. nats-server ignores an ``AckAll`` whose delivery sequence is not above the one
it acknowledged last (a subject from before a redelivery); the messages it did not
acknowledge are redelivered after ``ack_wait``, in done manifests, and their fresh
subjects acknowledge them then.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from chworkers.daemon.brokers.natsmanifests import Registry

if TYPE_CHECKING:
    from chworkers.daemon.brokers.natsconsumer import Consumer

log = logging.getLogger(__name__)

#: Gaps (sequences in no manifest) asked of the stream per advance at most.
GAP_CHECKS = 16


class Prefix:
    """Where the settled prefix ends (:func:`settled_prefix`): ``top``, the last
    settled sequence; ``seq`` and ``reply``, the highest sequence up to ``top`` whose
    acknowledgement subject is known (0 and "" when none is); ``gap`` to ``gap_end``,
    the sequences after ``top`` in no manifest while a settled one comes after them (0:
    none)."""

    __slots__ = ("gap", "gap_end", "reply", "seq", "top")

    def __init__(self, top: int, seq: int, reply: str, gap: int, gap_end: int) -> None:
        self.top, self.seq, self.reply, self.gap, self.gap_end = top, seq, reply, gap, gap_end


def settled_prefix(
    registry: Registry, floor: int, skips: list[list[int]], fresh: dict[int, str]
) -> Prefix:
    """The prefix of the stream settled above ``floor`` (the consumer's acknowledgement
    floor): done manifests' ranges and ``skips`` (sequences never delivered), taken in
    order while they join, up to a manifest not done or a gap in every manifest.
    ``fresh``: acknowledgement subjects of redelivered messages by stream sequence
    (newer than a manifest's, preferred at the same sequence)."""
    spans: list[tuple[int, int, bool, str]] = [
        (first, last, m.done, ack)
        for m in registry.manifests.values()
        for (first, last), ack in zip(m.ranges, m.acks or [""] * len(m.ranges), strict=False)
    ]
    spans += [(first, last, True, "") for first, last in skips]
    spans.sort()
    top, gap, gap_end = floor, 0, 0
    ends: list[tuple[int, str]] = []
    for first, last, done, ack in spans:
        if last <= top:
            if done and ack and last > floor:
                ends.append((last, ack))
            continue
        if first > top + 1:
            gap, gap_end = top + 1, first - 1  # in no manifest
            break
        if not done:
            break  # a batch in flight
        top = last
        if ack:
            ends.append((last, ack))
    seq, reply = 0, ""
    for at, ack in ends:
        if at <= top and at >= seq:
            seq, reply = at, ack
    for at, ack in fresh.items():
        if floor < at <= top and at >= seq:
            seq, reply = at, ack
    return Prefix(top, seq, reply, gap, gap_end)


class SettledAcks:
    """One source's acknowledgements of the settled prefix (coroutines on its event
    loop); remembers the gaps it found never delivered, until the floor passes them."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._skips: list[list[int]] = []

    async def advance(
        self, consumer: Consumer, registry: Registry, fresh: dict[int, str] | None = None
    ) -> int:
        """Acknowledge the settled prefix of ``registry`` (the manifests' key as just
        written or read) with one ``+ACK``, if it goes past the consumer's floor;
        returns the floor as read before it."""
        floor = await consumer.floor()
        self._skips = [s for s in self._skips if s[1] > floor]
        prefix = settled_prefix(registry, floor, self._skips, fresh or {})
        for _ in range(GAP_CHECKS):
            if not prefix.gap:
                break
            eligible = await consumer.next_eligible(prefix.gap)
            if eligible == prefix.gap:
                break  # a message the consumer delivers: not settled yet
            # None at or after it: this one is gone (only it: a server that does not
            # know next_by_subj answers for this sequence alone).
            end = prefix.gap if not eligible else min(prefix.gap_end, eligible - 1)
            log.debug("%s: sequences %d to %d are never delivered", self.where, prefix.gap, end)
            self._skips.append([prefix.gap, end])
            prefix = settled_prefix(registry, floor, self._skips, fresh or {})
        if prefix.seq > floor:
            await consumer.ack_all(prefix.reply.encode())
        return floor


__all__ = ["GAP_CHECKS", "Prefix", "SettledAcks", "settled_prefix"]
