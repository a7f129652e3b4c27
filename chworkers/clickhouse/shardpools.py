"""How a :class:`~chworkers.clickhouse.pool.ConnectionPool` over a sharded cluster is cut.

A sharded pool is one pool per shard, each over that shard's replicas (which fail over
as a pool's hosts do), each with its own ``max_connections`` and its own lease: a shard
that is down holds on to at most its own budget, never the others'. The helpers here
derive each shard's configuration and lease, check a shard index, and sum the shards'
statistics into one :class:`~chworkers.clickhouse.pooloptions.PoolStats`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from chworkers.clickhouse.cluster import Cluster
from chworkers.clickhouse.dsn import ConnectionConfig
from chworkers.clickhouse.leaseclient import LeaseClient
from chworkers.clickhouse.pooloptions import PoolStats
from chworkers.errors import ConfigError

__all__ = ["check_shard", "merge_stats", "per_shard", "shard_configs"]


def shard_configs(config: ConnectionConfig, cluster: Cluster) -> list[ConnectionConfig]:
    """``config`` for each shard: its replicas as the hosts, everything else shared."""
    return [
        dataclasses.replace(config, hosts=shard.replicas, shards=None) for shard in cluster.shards
    ]


def per_shard(value: object, shards: int, what: str) -> list[Any]:
    """One ``value`` per shard: a sequence must give exactly one per shard; a single lease
    cannot be shared (it would put every shard under one budget)."""
    if value is None:
        return [None] * shards
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) != shards:
            raise ConfigError(
                f"{what}: {len(value)} given for {shards} shard(s); give one per shard",
                key=what,
                value=list(value),
                expected=f"{shards} values, one per shard",
            )
        return list(value)
    if isinstance(value, LeaseClient) and shards > 1:
        raise ConfigError(
            f"{what}: one lease client for {shards} shards would put every shard under one "
            "budget; give one per shard (each shard has its own broker)",
            key=what,
            value=value,
            expected=f"{shards} lease clients, one per shard",
        )
    return [value] * shards


def check_shard(
    shard: int | None, shards: int | None, where: str, *, by_key: bool = False
) -> int | None:
    """``shard`` checked against a pool of ``shards`` shards (None: not sharded);
    ``by_key``: the call could route its rows by a ``sharding_key`` instead, and a
    missing shard says so."""
    if shards is None:
        if shard is not None:
            raise ConfigError(
                f"{where}: shard={shard!r} given, but the pool is not sharded (give the "
                "connection options shards=...)",
                key="shard",
                value=shard,
                expected="None for a pool without shards",
            )
        return None
    if shard is None:
        raise ConfigError(
            f"{where}: the pool has {shards} shards; say which one (shard=0..{shards - 1})"
            + (", or route the rows by key (sharding_key='sipHash64(user_id)')" if by_key else ""),
            key="shard",
            value=shard,
            expected=f"a shard index from 0 to {shards - 1}",
        )
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < shards:
        raise ConfigError(
            f"{where}: shard={shard!r} is not a shard index from 0 to {shards - 1}",
            key="shard",
            value=shard,
            expected=f"a shard index from 0 to {shards - 1}",
        )
    return shard


def merge_stats(stats: Sequence[PoolStats]) -> PoolStats:
    """The shards' statistics summed (counts, counters, limits); the wait percentiles are
    the worst shard's, and each host says its ``shard``."""

    def added(dicts: Sequence[dict[str, int]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in dicts:
            for key, n in d.items():
                out[key] = out.get(key, 0) + n
        return out

    held = [s.lease_held for s in stats]
    return PoolStats(
        in_use=sum(s.in_use for s in stats),
        idle=sum(s.idle for s in stats),
        waiting=sum(s.waiting for s in stats),
        opening=sum(s.opening for s in stats),
        max=sum(s.max for s in stats),
        min=sum(s.min for s in stats),
        created=sum(s.created for s in stats),
        closed=added([s.closed for s in stats]),
        acquired=sum(s.acquired for s in stats),
        timeouts=sum(s.timeouts for s in stats),
        acquire_wait_p50=max(s.acquire_wait_p50 for s in stats),
        acquire_wait_p99=max(s.acquire_wait_p99 for s in stats),
        acquire_wait_max=max(s.acquire_wait_max for s in stats),
        errors=added([s.errors for s in stats]),
        retries=added([s.retries for s in stats]),
        hosts=[{**h, "shard": i} for i, s in enumerate(stats) for h in s.hosts],
        lease_held=None if any(h is None for h in held) else sum(h or 0 for h in held),
    )
