"""Asynchronous inserts per pipeline (``async_insert = true``) and from Python.

What chworkers sends, read back by ClickHouse itself (a materialized view records
``getSetting(...)`` of each insert it sees: with the embedded endpoint's queue, the
flush's, which runs with the settings its clients sent), that errors come back to the
client (the insert waits for its flush), that a replay is dropped, and that a
configuration asking for fire-and-forget is refused. The queue itself (batching,
per-entry errors and deduplication, timeouts) is tested in test_embedded_async_queue.py.
"""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client

from chworkers import Supervisor
from chworkers.daemon import config
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ConfigError

pytestmark = pytest.mark.timeout(120)

SEEN = ("async_insert", "wait_for_async_insert", "async_insert_deduplicate")
VIEWS = "deduplicate_blocks_in_dependent_materialized_views"


@pytest.fixture
def recorded(ch_client: Client) -> Client:
    """``ev`` with a view that records the settings of every insert into it in ``seen``."""
    ch_client.command(
        "CREATE TABLE ev (k UInt64) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    cols = ", ".join(f"{name} String" for name in (*SEEN, "views"))
    ch_client.command(f"CREATE TABLE seen ({cols}) ENGINE = MergeTree ORDER BY tuple()")
    exprs = ", ".join(f"toString(getSetting('{name}')) AS {name}" for name in SEEN)
    ch_client.command(
        f"CREATE MATERIALIZED VIEW rec TO seen AS SELECT {exprs}, "
        f"toString(getSetting('{VIEWS}')) AS views FROM ev LIMIT 1 BY k"
    )
    return ch_client


def seen(client: Client) -> set[tuple[str, ...]]:
    return set(client.query("SELECT * FROM seen").result_rows)


def test_an_async_pipeline_waits_and_deduplicates(
    endpoint: EmbeddedClickHouse, database: str, recorded: Client
) -> None:
    # The defaults of a 25.8 server: deduplication in views off, so "not sent" shows.
    url = f"{endpoint.url}/{database}?compatibility=25.8"
    asynchronous = PipelineSettings(name="a", table="ev", async_insert=True).settings
    synchronous = PipelineSettings(name="s", table="ev").settings
    with Supervisor(url, workers=1) as sup:
        result = sup.insert_raw(
            "ev",
            b'{"k":1}\n{"k":"not a number"}\n{"k":2}\n',
            "JSONEachRow",
            settings=asynchronous,
            deduplication_token="a1",
            split_bad_rows=True,  # the daemon's call
        ).result(60)
        assert [r.record for r in result.rejected] == [b'{"k":"not a number"}\n']
        assert seen(recorded) == {("true", "true", "true", "false")}
        replay = sup.insert_raw(  # the same batch again (a lost answer): dropped
            "ev",
            b'{"k":1}\n{"k":"not a number"}\n{"k":2}\n',
            "JSONEachRow",
            settings=asynchronous,
            deduplication_token="a1",
            split_bad_rows=True,
        ).result(60)
        assert len(replay.rejected) == 1
        assert recorded.command("SELECT count() FROM ev") == 2
        recorded.command("TRUNCATE TABLE seen")
        sup.insert_raw("ev", b'{"k":3}\n', "JSONEachRow", settings=synchronous).result(60)
        assert seen(recorded) == {("false", "true", "false", "true")}  # wait: the default
    assert recorded.command("SELECT count() FROM ev") == 3


def test_from_python_by_settings_or_by_the_connection(
    endpoint: EmbeddedClickHouse, database: str, recorded: Client
) -> None:
    with Supervisor(f"{endpoint.url}/{database}?async_insert=1", workers=1) as sup:
        sup.insert("ev", [(1,)], ["k"]).result(60)
    with Supervisor(f"{endpoint.url}/{database}", workers=1) as sup:
        sup.insert("ev", [(2,)], ["k"], settings={"async_insert": 1}).result(60)
        with pytest.raises(ConfigError, match="wait_for_async_insert"):
            sup.insert(
                "ev", [(3,)], ["k"], settings={"async_insert": 1, "wait_for_async_insert": 0}
            ).result(60)
    assert seen(recorded) == {("true", "true", "true", "true")}
    assert recorded.command("SELECT count() FROM ev") == 2


def test_fire_and_forget_is_refused_when_the_config_is_read() -> None:
    with pytest.raises(ConfigError, match="wait_for_async_insert") as caught:
        config.load(
            data={
                "pipelines": [
                    {
                        "name": "a",
                        "table": "ev",
                        "async_insert": True,
                        "insert_settings": ["wait_for_async_insert=0"],
                    }
                ]
            },
            env={},
        )
    assert "pipeline 'a'" in str(caught.value)
