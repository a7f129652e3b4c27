"""The spool's memory tier: batches that wait for their insert in memory, not on disk.

A broker source's batch (docs/brokers.md, "The local spool") needs no local copy: the
broker keeps its entries durably until they are acknowledged, and the batch's manifest
lets any daemon rebuild it byte for byte. Writing it to disk would cost an fsync'd write
and a read of every byte and add no durability, so the spool keeps such batches here:
the same batch numbers, the same dispatcher (backoff, batches held on a permanent error,
completion), the same metrics and health, but a daemon that stops loses them, and the
broker delivers their entries again.

The tier is bounded (``[spool] memory_max_bytes``): a source whose batch does not fit
waits, so it stops fetching and the backlog stays in the broker, where other daemons see
it. The :class:`~chworkers.daemon.spool.Spool` owns the tier and calls it under its lock.
"""

from __future__ import annotations

from chworkers.daemon.batchfile import SpooledBatch

__all__ = ["MemoryTier"]


class MemoryTier:
    """Batches kept in memory, by batch number, and the bytes reserved for more."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._batches: dict[int, SpooledBatch] = {}
        self._sizes: dict[int, int] = {}
        self._reserved = 0

    def used(self) -> int:
        return sum(self._sizes.values()) + self._reserved

    def over(self, size: int) -> bool:
        """Whether a batch of ``size`` bytes must wait; one alone is always let in."""
        return self.used() + size > self.max_bytes and bool(self._sizes or self._reserved)

    def reserve(self, size: int) -> None:
        self._reserved += size

    def unreserve(self, size: int) -> None:
        self._reserved -= size

    def put(self, batch: SpooledBatch, size: int) -> None:
        """Keep ``batch`` (its reservation of ``size`` bytes becomes the batch's)."""
        self._reserved -= size
        self._batches[batch.seq] = batch
        self._sizes[batch.seq] = size

    def swap(self, seq: int, parts: list[SpooledBatch]) -> None:
        """Keep ``parts`` instead of batch ``seq`` (split by shard), in its bytes: each
        part its payload and a share of the whole's overhead (its meta: the broker's
        ids, which the parts share)."""
        size = self._sizes.pop(seq, 0)
        whole = self._batches.pop(seq)
        overhead = max(0, size - len(whole.payload)) // max(1, len(parts))
        for part in parts:
            self._batches[part.seq] = part
            self._sizes[part.seq] = len(part.payload) + overhead

    def get(self, seq: int) -> SpooledBatch | None:
        return self._batches.get(seq)

    def pop(self, seq: int) -> bool:
        """Forget a batch; False when it is not here (a batch on disk)."""
        self._sizes.pop(seq, None)
        return self._batches.pop(seq, None) is not None

    def batches(self) -> int:
        return len(self._batches)

    def bytes(self) -> int:
        return sum(self._sizes.values())

    def oldest(self) -> float | None:
        """When the oldest batch was made (wall clock), None when empty."""
        return min((b.created for b in self._batches.values()), default=None)

    def __repr__(self) -> str:
        return f"<MemoryTier {len(self._batches)} batches, {self.used()} of {self.max_bytes} bytes>"
