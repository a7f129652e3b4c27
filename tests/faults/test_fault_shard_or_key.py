"""A sharded supervisor's insert without a shard says that a sharding key would do too,
and a key value of the wrong type is named in English ("is an int").

Before, in a user trial of issue 14, `sup.insert("api", rows, column_names=...)` on a
supervisor over two shards failed with "insert into 'api': the pool has 2 shards; say
which one (shard=0..1)": the way issue 14 is about, routing each row by a key
(`sharding_key=`), went unmentioned.
"""

from __future__ import annotations

import pytest

from chworkers import Supervisor
from chworkers.clickhouse.sharding import ShardingKey
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import BatchError, ConfigError


def test_an_insert_without_a_shard_names_both_ways(endpoint: EmbeddedClickHouse) -> None:
    with Supervisor(
        endpoint.url,
        shards=[[endpoint.url], ["http://127.0.0.1:1"]],
        workers=1,
        start_method="fork",
    ) as sup:
        with pytest.raises(ConfigError) as caught:
            sup.insert("t", [(1,)], ["x"])
        text = str(caught.value)
        assert "say which one (shard=0..1), or route the rows by key (sharding_key=" in text
        # A task for a shard has no key to route by: the hint is not for it.
        with pytest.raises(ConfigError) as raw:
            sup.insert_raw("t", b'{"x": 1}\n', "JSONEachRow")
        assert "sharding_key" not in str(raw.value)


def test_a_key_value_of_the_wrong_type_is_named_with_its_article() -> None:
    """The trial's other message: "sharding key field 'user_id' = 1 is a int"."""
    bound = ShardingKey.parse("sipHash64(user_id)").bind({"user_id": "String"})
    with pytest.raises(BatchError, match=r"= 1 is an int, not a string"):
        bound.evaluate_rows([{"user_id": 1}])
    bound = ShardingKey.parse("n").bind({"n": "UInt8"})
    with pytest.raises(BatchError, match=r"is a str, not an integer"):
        bound.evaluate_rows([{"n": "x"}])
