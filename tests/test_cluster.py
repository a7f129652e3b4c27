"""The cluster description: shards of replicas with weights, and what a bad one says."""

from __future__ import annotations

import pickle

import pytest

from chworkers.clickhouse.cluster import Cluster, Shard
from chworkers.clickhouse.dsn import Host
from chworkers.errors import ConfigError


def test_a_list_of_replica_lists() -> None:
    cluster = Cluster.parse([["http://a1:8123", "http://a2:8123"], ["http://b1"]])
    assert cluster.shards == (
        Shard((Host("a1", 8123), Host("a2", 8123))),
        Shard((Host("b1", 8123),)),
    )
    assert cluster.weights == (1, 1) and cluster.total_weight == 2
    assert cluster.secure is False
    assert len(cluster) == 2
    assert str(cluster) == "a1:8123,a2:8123 | b1:8123"
    assert pickle.loads(pickle.dumps(cluster)) == cluster


def test_weights_as_remote_servers_has_them() -> None:
    as_dicts = Cluster.parse(
        [{"weight": 2, "replicas": ["https://a1", "https://a2:9443"]}, {"replicas": "https://b1"}]
    )
    assert as_dicts.weights == (2, 1)
    assert as_dicts.shards[0].replicas == (Host("a1", 8443), Host("a2", 9443))
    assert as_dicts.secure is True
    assert Cluster.parse([["a1:9000"], "b1"], weights=[3, 1]).weights == (3, 1)
    wrapped = Cluster.parse({"shards": [["a"], ["b"]], "weights": [1, 4]})
    assert wrapped.weights == (1, 4) and wrapped.secure is None
    assert Cluster.parse(wrapped) is wrapped
    assert Cluster.parse(wrapped, weights=[2, 2]).weights == (2, 2)
    assert Cluster.parse(["[::1]:8123"]).shards[0].replicas == (Host("::1", 8123),)


@pytest.mark.parametrize(
    ("value", "weights", "says"),
    [
        ([], None, "shards: [] is not a list of shards"),
        ("http://a:8123", None, "is not a list of shards"),
        ([["http://a"], []], None, "shards[1]: [] is not a non-empty list of replica URLs"),
        ([["ftp://a"]], None, "shards[0][0]: 'ftp://a' is not a replica URL"),
        ([["http://u:p@a"]], None, "user, password, database and options are the connection's"),
        ([["http://a/db"]], None, "a replica names only scheme, host and port"),
        ([["a:99999"]], None, "shards[0][0]: 'a:99999' is not a replica URL"),
        ([["a", "a"]], None, "shards[0]: ['a', 'a'] is not a list of distinct replicas"),
        ([["a"], ["b", "a:8123"]], None, "it is also a replica of shard 0"),
        ([["https://a"], ["http://b"]], None, "shards[0][0] is https but shards[1][0] is http"),
        ([["a"], ["b"]], [1], "gives 1 weight(s) for 2 shard(s)"),
        ([["a"], ["b"]], [1, 0], "weights[1]: weight 0 is not a positive integer"),
        ([{"replicas": ["a"], "weight": -1}], None, "shards[0]: weight -1 is not a positive"),
        ([{"replicas": ["a"], "weight": 2}], [2], "its weight is given twice"),
        ([{"hosts": ["a"]}], None, "unknown keys ['hosts']"),
        ([[3]], None, "shards[0][0]: 3 is not a replica URL"),
    ],
)
def test_bad_descriptions_say_what_where_and_why(
    value: object, weights: list[int] | None, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Cluster.parse(value, weights)  # type: ignore[arg-type]
    assert says in str(info.value)
    assert info.value.expected
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args
