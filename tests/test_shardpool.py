"""A pool and a supervisor over a sharded cluster: a connection or a task is for one
shard, each shard's replicas fail over, and each shard has its own connection budget."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.client import Client
from faultproxy import FaultProxy

from chworkers import (
    Cluster,
    ConnectionConfig,
    ConnectionPool,
    EmbeddedClickHouse,
    Host,
    LeaseBroker,
    Supervisor,
)
from chworkers.clickhouse.shardleases import ShardLeaseBrokers
from chworkers.errors import ConfigError, ConnectError, PoolError, PoolTimeoutError

pytestmark = pytest.mark.timeout(90)

FAST = {"min_connections": 0, "acquire_timeout": 0.5, "retry": {"max_attempts": 1}}


@pytest.fixture
def dead() -> str:
    """A loopback address nobody listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def _host(url: str) -> Host:
    host, _, port = url.removeprefix("http://").rpartition(":")
    return Host(host, int(port))


def test_a_connection_is_for_one_shard(
    endpoint: EmbeddedClickHouse, fault_proxy: FaultProxy, database: str
) -> None:
    pool = ConnectionPool(
        f"{endpoint.url}/{database}", FAST, shards=[[endpoint.url], [fault_proxy.url]]
    )
    try:
        assert pool.shards is not None and len(pool.shards) == 2
        assert pool.config.shards == Cluster.parse([[endpoint.url], [fault_proxy.url]])
        with pool.connection(shard=0) as conn:
            assert conn.host == _host(endpoint.url)
            assert conn.query("SELECT currentDatabase()").result_rows == [(database,)]
        with pool.connection(shard=1) as conn:
            assert conn.host == _host(fault_proxy.url)
        assert fault_proxy.counts["requests"] >= 1
        assert pool.with_connection(lambda c: c.query("SELECT 7").result_rows, shard=1) == [(7,)]
        with pytest.raises(
            ConfigError, match=r"the pool has 2 shards; say which one \(shard=0..1\)"
        ):
            pool.get_connection()
        with pytest.raises(ConfigError, match="shard=2 is not a shard index from 0 to 1"):
            pool.with_connection(lambda c: None, shard=2)
        assert pool.stats().acquired == 3
        assert pool.stats(shard=1).acquired == 2
        assert {h["shard"] for h in pool.stats().hosts} == {0, 1}
        assert "shard 1: <ConnectionPool" in repr(pool)
        with ConnectionPool(endpoint.url, FAST) as other:
            stranger = other.get_connection()
            with pytest.raises(PoolError, match="does not belong to any shard"):
                pool.release_connection(stranger)
            other.release_connection(stranger)
    finally:
        pool.close()
    assert pool.closed


def test_an_unsharded_pool_refuses_a_shard(endpoint: EmbeddedClickHouse) -> None:
    with (
        ConnectionPool(endpoint.url, FAST) as pool,
        pytest.raises(ConfigError, match="the pool is not sharded"),
    ):
        pool.get_connection(shard=0)


def test_the_cluster_may_come_in_the_connection_options(endpoint: EmbeddedClickHouse) -> None:
    config = ConnectionConfig.coerce(
        {
            "url": f"{endpoint.url}/default",
            "shards": [[endpoint.url], ["127.0.0.1:1"]],
            "shard_weights": [3, 1],
        }
    )
    assert config.shards is not None and config.shards.weights == (3, 1)
    assert config.hosts == (_host(endpoint.url), Host("127.0.0.1", 1))
    with pytest.raises(ConfigError, match="given together with hosts"):
        ConnectionConfig.coerce({"hosts": ["a"], "shards": [["b"]]})
    with pytest.raises(ConfigError, match=r"shards\[0\]\[0\]: 'ftp://a'"):
        ConnectionConfig.coerce({"shards": [["ftp://a"]]})
    with ConnectionPool(config, FAST) as pool:
        assert pool.with_connection(lambda c: c.query("SELECT 1").result_rows, shard=0) == [(1,)]


def test_a_shards_replicas_fail_over(endpoint: EmbeddedClickHouse, dead: str) -> None:
    options = {**FAST, "retry": {"max_attempts": 3, "initial_backoff": 0.01}}
    with ConnectionPool(endpoint.url, options, shards=[[dead, endpoint.url]]) as pool:
        for _ in range(4):
            assert pool.with_connection(lambda c: c.query("SELECT 1").result_rows, shard=0) == [
                (1,)
            ]
        hosts = {h["host"]: h for h in pool.stats(shard=0).hosts}
        assert hosts[str(_host(dead))]["up"] is False


def test_a_shard_down_cannot_take_the_others_connections(
    endpoint: EmbeddedClickHouse, dead: str
) -> None:
    """Each shard has its own budget (max_connections and its own lease broker): shard 1
    is unreachable and shard 0's connections are all out, yet each fails for its own
    reason, and shard 0 gets its connection back as soon as one returns."""
    brokers = ShardLeaseBrokers(1, 2)
    brokers.start()
    options = {**FAST, "max_connections": 1}
    pool = ConnectionPool(
        endpoint.url, options, shards=[[endpoint.url], [dead]], lease=brokers.client("w")
    )
    try:
        held = pool.get_connection(shard=0)
        with pytest.raises(ConnectError):
            pool.get_connection(shard=1)  # its own failure, not a wait for shard 0's lease
        with pytest.raises(PoolTimeoutError):
            pool.get_connection(shard=0)
        pool.release_connection(held)
        with pool.connection(shard=0) as conn:
            assert conn.query("SELECT 1").result_rows == [(1,)]
        per_shard = brokers.shard_stats()
        assert [s.capacity for s in per_shard] == [1, 1]
        assert brokers.stats().capacity == 2
    finally:
        pool.close()
        brokers.close()


def test_one_lease_client_for_several_shards_is_refused(endpoint: EmbeddedClickHouse) -> None:
    broker = LeaseBroker(1)
    try:
        with pytest.raises(ConfigError, match="one lease client for 2 shards"):
            ConnectionPool(
                endpoint.url, FAST, shards=[[endpoint.url], ["h2"]], lease=broker.client("w")
            )
    finally:
        broker.close()


@pytest.fixture
def two_tables(ch_client: Client, database: str) -> Iterator[str]:
    ch_client.command("CREATE TABLE t (x UInt64) ENGINE = MergeTree ORDER BY x")
    yield database


def test_supervisor_tasks_go_to_their_shard(
    endpoint: EmbeddedClickHouse, fault_proxy: FaultProxy, two_tables: str, ch_client: Client
) -> None:
    with Supervisor(
        f"{endpoint.url}/{two_tables}",
        shards=[[endpoint.url], [fault_proxy.url]],
        workers=1,
        max_connections=1,
        start_method="fork",
    ) as sup:
        assert sup.cluster is not None and len(sup.cluster) == 2
        assert isinstance(sup.broker, ShardLeaseBrokers)
        before = fault_proxy.counts["requests"]
        assert sup.insert("t", [(1,), (2,)], ["x"], shard=0).result(30) == 2
        between = fault_proxy.counts["requests"]
        assert sup.insert("t", [(3,)], ["x"], shard=1).result(30) == 1
        assert sup.insert_raw("t", b'{"x": 4}\n', "JSONEachRow", shard=1).result(30) == 1
        assert between == before  # shard 0 never went through the proxy
        assert fault_proxy.counts["requests"] > between
        assert sup.submit_to(1, lambda conn: conn.host.port).result(30) == fault_proxy.port
        with pytest.raises(ConfigError, match="say which one"):
            sup.insert("t", [(5,)], ["x"])
        with pytest.raises(ConfigError, match="shard=3 is not a shard index"):
            sup.insert_raw("t", b"", "JSONEachRow", shard=3)
        assert sup.stats().pool is not None and sup.stats().pool.capacity == 2
    assert sorted(r[0] for r in ch_client.query("SELECT x FROM t").result_rows) == [1, 2, 3, 4]
