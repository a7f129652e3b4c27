"""A constructor's default drifted from its setting: ``HostSelector`` avoided a failed
host for 5 s by default while ``clickhouse.pool.host_cooldown`` is declared (and
documented) as 2 s, so a pool built without options waited longer than documented."""

from __future__ import annotations

from chworkers.clickhouse.dsn import Host
from chworkers.clickhouse.hosts import HostSelector
from chworkers.clickhouse.pooloptions import PoolOptions


def test_a_failed_host_is_avoided_for_the_declared_cooldown() -> None:
    now = [100.0]
    host = Host("a", 8123)
    hosts = HostSelector([host], clock=lambda: now[0])
    hosts.report_failure(host, OSError("connection refused"))
    now[0] += PoolOptions().host_cooldown - 0.01
    assert hosts.is_down(host)
    now[0] += 0.02
    assert not hosts.is_down(host)
    assert hosts.due_for_probe() == [host]
