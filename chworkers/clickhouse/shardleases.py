"""One connection budget per shard: :class:`ShardLeaseBrokers`, a lease broker per shard
driven as one.

Each shard of a sharded cluster has its own :class:`~chworkers.clickhouse.lease.LeaseBroker`
with the same capacity (``max_connections`` is per shard), so the count stays exact
across processes for every shard, and a shard that is down (its workers' connections
waiting on it, retrying) can hold at most its own budget: the others' leases are
untouched. A worker gets one client per shard (:meth:`ShardLeaseBrokers.client`), in
shard order, which its sharded :class:`~chworkers.clickhouse.pool.ConnectionPool` takes
as ``lease=``.
"""

from __future__ import annotations

from multiprocess.context import BaseContext

from chworkers.clickhouse.lease import LeaseBroker, LeaseClient, LeaseStats

__all__ = ["ShardLeaseBrokers"]


class ShardLeaseBrokers:
    """``shards`` lease brokers of ``capacity`` each (the supervisor owns them)."""

    def __init__(self, capacity: int, shards: int, *, context: BaseContext | None = None) -> None:
        self.brokers: list[LeaseBroker] = []
        try:
            for _ in range(shards):
                self.brokers.append(LeaseBroker(capacity, context=context))
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return (
            "<ShardLeaseBrokers "
            + "; ".join(f"shard {i}: {b!r}" for i, b in enumerate(self.brokers))
            + ">"
        )

    def start(self) -> None:
        for broker in self.brokers:
            broker.start()

    def client(self, holder: str) -> list[LeaseClient]:
        """One client per shard, in shard order, for ``holder``'s process."""
        return [broker.client(holder) for broker in self.brokers]

    def reclaim(self, holder: str) -> int:
        return sum(broker.reclaim(holder) for broker in self.brokers)

    def resize(self, capacity: int) -> None:
        """Each shard's capacity."""
        for broker in self.brokers:
            broker.resize(capacity)

    @property
    def capacity(self) -> int:
        """Each shard's capacity."""
        return self.brokers[0].capacity

    def problems(self) -> list[str]:
        return [f"shard {i}: {p}" for i, b in enumerate(self.brokers) for p in b.problems()]

    def shard_stats(self) -> list[LeaseStats]:
        return [broker.stats() for broker in self.brokers]

    def stats(self) -> LeaseStats:
        """The shards' leases summed (capacity: all shards' together)."""
        every = self.shard_stats()

        def added(dicts: list[dict[str, int]]) -> dict[str, int]:
            out: dict[str, int] = {}
            for d in dicts:
                for key, n in d.items():
                    out[key] = out.get(key, 0) + n
            return out

        return LeaseStats(
            capacity=sum(s.capacity for s in every),
            in_use=sum(s.in_use for s in every),
            waiting=sum(s.waiting for s in every),
            by_holder=added([s.by_holder for s in every]),
            waiting_by_holder=added([s.waiting_by_holder for s in every]),
            granted_total=sum(s.granted_total for s in every),
            timeouts_total=sum(s.timeouts_total for s in every),
            reclaimed_total=sum(s.reclaimed_total for s in every),
            clients=max((s.clients for s in every), default=0),
        )

    def waiting(self) -> int:
        """How many requests wait for a lease now, over all shards."""
        return sum(broker.waiting() for broker in self.brokers)

    def close(self) -> None:
        for broker in self.brokers:
            broker.close()
