"""The manifests of a JetStream source's batches: one key of a key-value bucket, changed
only by compare-and-set (docs/brokers.md, "NATS JetStream").

Every daemon of a pipeline writes its batches' manifests into the same key
(``<stream>.<consumer>``) of the bucket: a JSON map from each batch's token to the stream
sequences it holds (as ranges). A change reads the key and its revision, checks, and
writes it back with that revision expected; a daemon that changed it in between makes the
write fail, and the change is made again on what that daemon wrote. That is what makes
the check of :meth:`ManifestStore.register` and its write one step, as the Redis
source's Lua script does: no sequence is ever in two manifests. (A store's next change
starts from what it wrote last, one read of the key less per batch: the expected
revision refuses that just the same when another daemon wrote since.)

A manifest is removed once the consumer's acknowledgement floor (every message up to it
acknowledged) passes its last sequence, or when older than ``manifest_ttl``.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from chworkers.errors import BrokerError

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

#: Attempts of one change while other daemons keep changing the key first.
CHANGE_ATTEMPTS = 200


def to_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sequences as sorted, inclusive ``[first, last]`` ranges of consecutive numbers."""
    values = sorted(set(seqs))
    if values and values[-1] - values[0] == len(values) - 1:
        return [[values[0], values[-1]]]  # consecutive: one pull's worth, the usual case
    out: list[list[int]] = []
    for seq in values:
        if out and out[-1][1] == seq - 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


def in_order(ids: list[str]) -> tuple[list[str], list[list[int]]]:
    """A batch's ids (stream sequences) as its token takes them, ascending and written
    as ``str(seq)`` writes them, and their :func:`to_ranges`. The usual batch, one
    pull's new messages in the order they came, already is: its ids are kept, and its
    one range found, without a string or a set made per message."""
    seqs = list(map(int, ids))
    if seqs:
        first, last = seqs[0], seqs[-1]
        if (
            first > 0
            and last - first == len(seqs) - 1
            and seqs == sorted(seqs)
            # Each id as str() writes it (no sign, no leading zero): none is longer.
            and sum(map(len, ids)) == _digits(first, last)
        ):
            return ids, [[first, last]]
    ordered = sorted(seqs)
    return list(map(str, ordered)), to_ranges(ordered)


def _digits(first: int, last: int) -> int:
    """How many decimal digits the numbers ``first`` to ``last`` (positive) have in all."""
    total, low = 0, first
    while low <= last:
        width = len(str(low))
        high = min(last, 10**width - 1)
        total += (high - low + 1) * width
        low = high + 1
    return total


@dataclasses.dataclass
class Manifest:
    """One batch: its token, its stream sequences, when it was written and by whom, and
    whether a daemon that rebuilt it saw its insert confirmed (``done``: its messages may
    be acknowledged by whoever receives them; with ``ack_policy = "all"`` every batch is
    marked so once inserted, and its messages are *settled*). ``acks``: the
    acknowledgement subject of each range's last message ("" when unknown), with
    ``ack_policy = "all"``: any daemon acknowledges everything up to the end of a range
    by one ``+ACK`` to it (:mod:`~chworkers.daemon.brokers.natsprefix`)."""

    token: str
    ranges: list[list[int]]
    created: float = 0.0
    by: str = ""
    done: bool = False
    acks: list[str] = dataclasses.field(default_factory=list)

    def seqs(self) -> list[int]:
        return [seq for first, last in self.ranges for seq in range(first, last + 1)]

    @property
    def last(self) -> int:
        return self.ranges[-1][1] if self.ranges else 0

    def body(self) -> dict[str, Any]:
        body = {"seqs": self.ranges, "created": self.created, "by": self.by, "done": self.done}
        if self.acks:
            body["acks"] = self.acks
        return body


@dataclasses.dataclass
class Registry:
    """The key's value as read (``revision`` 0: the key does not exist)."""

    manifests: dict[str, Manifest] = dataclasses.field(default_factory=dict)
    revision: int = 0

    @classmethod
    def decode(cls, value: bytes, revision: int) -> Registry:
        data = json.loads(value) if value else {}
        manifests = {
            token: Manifest(
                token,
                [list(r) for r in body["seqs"]],
                float(body.get("created", 0)),
                str(body.get("by", "")),
                bool(body.get("done", False)),
                [str(a) for a in body.get("acks", ())],
            )
            for token, body in data.get("batches", {}).items()
        }
        return cls(manifests, revision)

    def encode(self) -> bytes:
        batches = {token: m.body() for token, m in self.manifests.items()}
        return json.dumps({"v": 1, "batches": batches}, separators=(",", ":")).encode()

    def owners(self, seqs: Iterable[int]) -> dict[int, Manifest]:
        """The manifest of each of ``seqs`` that is in one."""
        spans = sorted(
            (first, last, m) for m in self.manifests.values() for first, last in m.ranges
        )
        starts = [first for first, _, _ in spans]
        out: dict[int, Manifest] = {}
        for seq in seqs:
            at = bisect.bisect_right(starts, seq) - 1
            if at >= 0 and spans[at][1] >= seq:
                out[seq] = spans[at][2]
        return out

    def overlaps(self, ranges: list[list[int]]) -> dict[int, Manifest]:
        """:meth:`owners` of the sequences of ``ranges`` (sorted, as a manifest's), found
        range by range: what a batch's sequences have in common with the manifests
        costs per range, not per sequence."""
        spans = sorted(
            (first, last, m) for m in self.manifests.values() for first, last in m.ranges
        )
        ends = [last for _, last, _ in spans]
        if ends != sorted(ends):  # manifests that share sequences: never written so
            return self.owners(seq for first, last in ranges for seq in range(first, last + 1))
        out: dict[int, Manifest] = {}
        for first, last in ranges:
            # The spans that end at or after ``first``, until one starts after ``last``.
            for span_first, span_last, manifest in spans[bisect.bisect_left(ends, first) :]:
                if span_first > last:
                    break
                out.update(
                    dict.fromkeys(range(max(first, span_first), min(last, span_last) + 1), manifest)
                )
        return out

    def prune(self, floor: int, now: float, ttl: float) -> list[str]:
        """Forget manifests whose messages are all acknowledged (their last sequence at or
        under ``floor``) or that are older than ``ttl``; returns their tokens."""
        gone = [
            token for token, m in self.manifests.items() if m.last <= floor or now - m.created > ttl
        ]
        for token in gone:
            del self.manifests[token]
        return gone


class ManifestStore:
    """The manifests' key in a bucket (coroutines: they run on the source's event loop)."""

    def __init__(self, kv: KeyValue, key: str, *, ttl: float, where: str) -> None:
        self.kv = kv
        self.key = key
        self.ttl = ttl
        self.where = where
        #: The key's value as this store last wrote it, with its revision: the next
        #: change starts from it instead of reading the key (the compare-and-set refuses
        #: it if another daemon wrote since). Taken by the change that uses it.
        self._written: Registry | None = None

    async def load(self) -> Registry:
        import nats.js.errors

        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            return Registry()
        return Registry.decode(entry.value or b"", int(entry.revision or 0))

    async def register(self, manifest: Manifest, floor: int) -> dict[int, Manifest]:
        """Write ``manifest`` unless one of its sequences is in another manifest; returns
        those sequences with their manifests (empty: written)."""
        conflicts: dict[int, Manifest] = {}

        def add(registry: Registry) -> bool:
            conflicts.clear()
            owners = registry.overlaps(manifest.ranges)
            conflicts.update({s: m for s, m in owners.items() if m.token != manifest.token})
            if conflicts or manifest.token in registry.manifests:
                return False  # refused, or rebuilt: it is there already
            registry.manifests[manifest.token] = manifest
            return True

        await self._change(add, floor)
        return conflicts

    async def mark_done(self, token: str, floor: int) -> Registry:
        """A rebuilt batch's insert was confirmed (with ``ack_policy = "all"``, any
        batch's): its other messages, wherever they are redelivered, are acknowledged
        without another insert. Returns the key's value as written (or as read, when the
        manifest was gone or done already)."""

        def done(registry: Registry) -> bool:
            manifest = registry.manifests.get(token)
            if manifest is None or manifest.done:
                return False
            manifest.done = True
            return True

        return await self._change(done, floor)

    async def settle(self, manifest: Manifest, floor: int) -> Registry:
        """Write ``manifest`` marked done (messages that go into no insert: poison
        dead-lettered, empty messages), with ``ack_policy = "all"``: they count as
        settled. Sequences another manifest holds already are left to it."""
        manifest.done = True

        def add(registry: Registry) -> bool:
            taken = registry.overlaps(manifest.ranges)
            if manifest.token in registry.manifests:
                return False
            if taken:
                seqs = [s for s in manifest.seqs() if s not in taken]
                if not seqs:
                    return False
                ends = dict(zip((r[1] for r in manifest.ranges), manifest.acks, strict=False))
                manifest.ranges = to_ranges(seqs)
                manifest.acks = [ends.get(last, "") for _, last in manifest.ranges]
            registry.manifests[manifest.token] = manifest
            return True

        return await self._change(add, floor)

    async def _change(self, change: Callable[[Registry], bool], floor: int) -> Registry:
        """Make ``change`` to the key's value, by compare-and-set: the change is made on
        the value as read (or as this store last wrote it, which the write's expected
        revision checks), and made again on the new value when another daemon wrote
        first. A change found not to be needed (``change`` returns False: refused, or
        made already) is so on the value read from the key, never on the remembered one.
        """
        import nats.js.errors

        attempts = 0
        while attempts < CHANGE_ATTEMPTS:
            remembered, self._written = self._written, None
            registry = remembered if remembered is not None else await self.load()
            registry.prune(floor, time.time(), self.ttl)
            if not change(registry):
                if remembered is not None:
                    continue  # decided on what the key held: read it
                return registry
            attempts += 1
            value = registry.encode()
            try:
                if registry.revision == 0:
                    registry.revision = await self.kv.create(self.key, value)
                else:
                    registry.revision = await self.kv.update(
                        self.key, value, last=registry.revision
                    )
                self._written = registry
                return registry
            except nats.js.errors.KeyWrongLastSequenceError:
                # Another daemon changed it first: read what it wrote and try again.
                await asyncio.sleep(random.uniform(0, 0.005))
        raise BrokerError(
            f"{self.where}: the manifests key {self.key} kept changing under "
            f"{CHANGE_ATTEMPTS} attempts to change it"
        )


__all__ = ["Manifest", "ManifestStore", "Registry", "in_order", "to_ranges"]
