"""A pipeline's ``create`` holding a whole CREATE TABLE statement (or an engine clause).

The daemon wraps ``create`` in its own ``CREATE TABLE IF NOT EXISTS t (...) ENGINE = ...``;
a whole statement there was a syntax error ClickHouse answered at every attempt, forever,
while every batch waited in the spool. It is refused with the config now, naming the key.
"""

from __future__ import annotations

import pytest

from chworkers.daemon import config
from chworkers.errors import ConfigError


def _load(create: str) -> config.Config:
    pipeline = {"name": "p", "table": "t", "source": "stdin", "create": create}
    return config.load(data={"pipelines": [pipeline]}, env={})


@pytest.mark.parametrize(
    "create",
    [
        "CREATE TABLE IF NOT EXISTS t (id UInt64) ENGINE = MergeTree ORDER BY id",
        "create or replace table t (id UInt64) engine = Memory",
        "id UInt64, user String) ENGINE = MergeTree ORDER BY id",
    ],
)
def test_a_statement_in_create_is_refused_with_the_config(create: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(create)
    assert "create" in str(info.value) and "columns only" in str(info.value)


@pytest.mark.parametrize(
    "create", ["id UInt64, engine String, created DateTime", "create String, ts DateTime"]
)
def test_columns_named_like_keywords_are_taken(create: str) -> None:
    config = _load(create)
    (pipeline,) = config.pipelines
    assert pipeline.create_statement() == (
        f"CREATE TABLE IF NOT EXISTS t ({create}) ENGINE = MergeTree ORDER BY tuple() "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
