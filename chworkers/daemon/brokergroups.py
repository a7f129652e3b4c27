"""A broker's batch split by shard is acknowledged once all its parts are confirmed.

A broker source's batch (docs/brokers.md) is acknowledged to the broker, and its manifest
removed, once ClickHouse confirmed it. On a sharded cluster (docs/sharding.md) the
:class:`~chworkers.daemon.splitter.Splitter` replaces it in the spool's memory tier by one
part per shard, each confirmed by its own shard: :class:`BrokerGroups` keeps, per whole
batch, the parts not confirmed yet, and says when the last one is, so that the whole is
acknowledged then and not before (a part confirmed first must not acknowledge rows
another shard has not written). Until then the broker keeps the batch's messages pending
for this daemon (Redis's pending entries, kept fresh; NATS's in-progress notes), and a
daemon that stops loses only memory: the batch is rebuilt from its manifest with its
token, split again into the same parts with the same tokens, and the shards that have
their part drop it as a duplicate.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence

from chworkers.daemon.batchfile import SpooledBatch

__all__ = ["BrokerGroups"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Group:
    whole: SpooledBatch  # its description: what the broker source acknowledges
    waiting: set[int]  # the parts (batch numbers) not confirmed yet
    parts: int


class BrokerGroups:
    """The broker batches split by shard whose messages are not acknowledged yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[int, _Group] = {}

    def __repr__(self) -> str:
        with self._lock:
            return f"<BrokerGroups: {len(self._groups)} split broker batches open>"

    def split(self, whole: SpooledBatch, parts: Sequence[SpooledBatch]) -> None:
        """``whole`` was replaced by ``parts`` (the splitter's ``on_split``)."""
        if "broker" not in whole.meta:
            return  # a batch on disk: its split is the spool's to commit
        described = dataclasses.replace(whole, payload=b"")
        with self._lock:
            self._groups[whole.seq] = _Group(described, {p.seq for p in parts}, len(parts))

    def confirmed(self, batch: SpooledBatch) -> SpooledBatch | None:
        """``batch`` was confirmed: the batch whose broker messages may be acknowledged
        now (``batch`` itself when it is not a part; its whole once every part of it is
        confirmed), or None while parts of it wait. Asked again for the same part (its
        acknowledgement failed, and it was tried again) it says the same."""
        group = batch.meta.get("group")
        if group is None:
            return batch
        with self._lock:
            found = self._groups.get(int(group))
            if found is None:
                log.warning(
                    "batch %d is part of broker batch %s, which this daemon did not split: "
                    "its messages are left to be rebuilt",
                    batch.seq,
                    group,
                )
                return None
            found.waiting.discard(batch.seq)
            return None if found.waiting else found.whole

    def acknowledged(self, whole: SpooledBatch) -> None:
        """The broker took the whole's acknowledgement: forget it."""
        with self._lock:
            self._groups.pop(whole.seq, None)

    def held_back(self, pipeline: str) -> int:
        """The pipeline's split batches of which some parts were confirmed and others
        wait (their shard down or slow): they do not count against a broker source's
        default ``max_batches``, so the other shards go on (docs/sharding.md); the
        memory tier's ``memory_max_bytes`` still bounds them."""
        with self._lock:
            return sum(
                1
                for g in self._groups.values()
                if g.whole.pipeline == pipeline and 0 < len(g.waiting) < g.parts
            )
