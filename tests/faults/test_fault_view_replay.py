"""A replayed insert must not double the rows of the table's materialized views.

ClickHouse deduplicates a replayed insert (same token) in its table, but pushes the block
through the table's materialized views all the same: before 26.2,
``deduplicate_blocks_in_dependent_materialized_views`` was 0, so every replay (a lost
response, a daemon killed before its batch left the spool) added the batch's rows to the
views' targets again. chworkers sends the setting with every synchronous insert. The
embedded engine is 26.x, whose default is already 1, so the connections here ask for the
defaults of a 25.8 server (``compatibility=25.8``), which every supported server before
26.2 has.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from daemonthread import Running

from chworkers import Supervisor
from chworkers.clickhouse import views
from chworkers.clickhouse.connection import Connection
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ConfigError

pytestmark = pytest.mark.timeout(120)

ROWS = b"".join(b'{"k":%d,"v":"row %d"}\n' % (i, i) for i in range(100))


@pytest.fixture
def viewed(ch_client: Client) -> Iterator[Client]:
    """``src`` (deduplicating) with two views: ``mv_sum`` into ``sums`` (deduplicating) and
    ``mv_raw`` into ``raw`` (a plain MergeTree that does not), and ``mv_next`` from
    ``sums`` into ``sums2`` (a view of a view's target)."""
    window = "SETTINGS non_replicated_deduplication_window = 100"
    ch_client.command(
        f"CREATE TABLE src (k UInt64, v String) ENGINE = MergeTree ORDER BY k {window}"
    )
    ch_client.command(
        f"CREATE TABLE sums (n UInt64, s UInt64) ENGINE = MergeTree ORDER BY n {window}"
    )
    ch_client.command(f"CREATE TABLE sums2 (n UInt64) ENGINE = MergeTree ORDER BY n {window}")
    ch_client.command("CREATE TABLE raw (k UInt64) ENGINE = MergeTree ORDER BY k")
    ch_client.command(
        "CREATE MATERIALIZED VIEW mv_sum TO sums AS SELECT count() AS n, sum(k) AS s FROM src"
    )
    ch_client.command("CREATE MATERIALIZED VIEW mv_raw TO raw AS SELECT k FROM src")
    ch_client.command("CREATE MATERIALIZED VIEW mv_next TO sums2 AS SELECT n FROM sums")
    yield ch_client


def counts(client: Client) -> dict[str, int]:
    return {t: int(client.command(f"SELECT count() FROM {t}")) for t in ("src", "sums", "sums2")}


def test_a_replayed_batch_reaches_the_views_once(
    endpoint: EmbeddedClickHouse, database: str, viewed: Client
) -> None:
    url = f"{endpoint.url}/{database}?compatibility=25.8"
    with Supervisor(url, workers=1) as sup:
        for _ in range(3):  # the daemon's replay: the same bytes, the same token
            sup.insert_raw("src", ROWS, "JSONEachRow", deduplication_token="batch-1").result(60)
        rows = [(i, f"row {i}") for i in range(100, 150)]
        for _ in range(2):  # the Python API's rows (Native), replayed with their token
            sup.insert("src", rows, ["k", "v"], deduplication_token="rows-1").result(60)
    assert counts(viewed) == {"src": 150, "sums": 2, "sums2": 2}
    assert viewed.command("SELECT sum(s) FROM sums") == sum(range(150))


def test_the_views_setting_is_what_doubles_them(
    endpoint: EmbeddedClickHouse, database: str, viewed: Client
) -> None:
    """The same replay with the setting turned off by the caller (their settings win):
    the views' rows double, so the test above checks the setting, not the engine."""
    url = f"{endpoint.url}/{database}?compatibility=25.8"
    off = {"deduplicate_blocks_in_dependent_materialized_views": 0}
    with Supervisor(url, workers=1) as sup:
        for _ in range(2):
            sup.insert_raw(
                "src", ROWS, "JSONEachRow", settings=off, deduplication_token="batch-1"
            ).result(60)
    assert counts(viewed) == {"src": 100, "sums": 2, "sums2": 2}


def test_views_whose_target_does_not_deduplicate_are_named(
    endpoint: EmbeddedClickHouse, database: str, viewed: Client, caplog: pytest.LogCaptureFixture
) -> None:
    conn = Connection(f"{endpoint.url}/{database}")
    try:
        found = list(views.undeduplicated_views(conn, database, "src"))
        assert found == [(f"{database}.mv_raw", f"{database}.raw", "MergeTree")]
        with caplog.at_level(logging.WARNING, logger="chworkers.clickhouse.views"):
            conn.raw_insert("src", ROWS, fmt="JSONEachRow", deduplication_token="b")
            conn.raw_insert("src", ROWS, fmt="JSONEachRow", deduplication_token="c")
    finally:
        conn.close()
    warned = [r.getMessage() for r in caplog.records if "mv_raw" in r.getMessage()]
    assert len(warned) == 1, warned  # once per table and process
    assert f"writes to {database}.raw" in warned[0]
    assert "non_replicated_deduplication_window" in warned[0]


def test_async_inserts_must_wait(
    endpoint: EmbeddedClickHouse, database: str, viewed: Client
) -> None:
    conn = Connection(f"{endpoint.url}/{database}")
    try:
        with pytest.raises(ConfigError, match="wait_for_async_insert"):
            conn.raw_insert(
                "src",
                ROWS,
                fmt="JSONEachRow",
                settings={"async_insert": 1, "wait_for_async_insert": 0},
                deduplication_token="x",
            )
    finally:
        conn.close()
    assert counts(viewed)["src"] == 0


def test_defaults_a_profile_fixes_are_not_sent(
    endpoint: EmbeddedClickHouse, database: str, viewed: Client
) -> None:
    """A settings profile that fixes ``async_insert`` (a constraint: ``readonly`` in
    ``system.settings``) must not make every insert fail: clickhouse-connect refuses to
    send a readonly setting with another value ("Setting async_insert is readonly"), so
    chworkers leaves that default out. The engine has no profiles; the client's view of
    ``system.settings`` says what such a server says."""
    from clickhouse_connect.driver.models import SettingDef

    conn = Connection(f"{endpoint.url}/{database}")
    try:
        conn.client.server_settings["async_insert"] = SettingDef("async_insert", "1", 1)
        conn.raw_insert("src", ROWS, fmt="JSONEachRow", deduplication_token="p")
        conn.insert("src", [(500, "x")], ["k", "v"], deduplication_token="q")
    finally:
        conn.close()
    assert counts(viewed)["src"] == 101


def test_a_daemon_batch_whose_answer_is_lost_reaches_the_views_once(
    fault_proxy: Any, database: str, viewed: Client, tmp_path: Path
) -> None:
    """The daemon end to end: ClickHouse inserts each batch, the proxy throws the first
    answer of each of the first batches away (the "maybe applied" case), the worker
    sends it again with its token: the table and its views hold each row once."""
    fault_proxy.set("drop", times=3, match=b"INSERT")
    (tmp_path / "in.json").write_bytes(ROWS)
    running = Running(
        {
            "state_dir": str(tmp_path / "state"),
            "clickhouse": {
                "url": f"{fault_proxy.url}/{database}?compatibility=25.8",
                "pool": {"retry": {"initial_backoff": 0.05, "max_backoff": 0.2}},
            },
            "supervisor": {"workers": 1},
            "metrics": {"port": 0},
            "spool": {"fsync": False, "retry_backoff_max": 0.5},
            "pipelines": [
                {
                    "name": "p",
                    "source": "file",
                    "paths": [str(tmp_path / "in.json")],
                    "table": "src",
                    "max_delay": "50ms",
                }
            ],
        }
    )
    running.thread.join(60)
    assert running.code == 0 and running.error is None
    assert fault_proxy.counts["dropped"] >= 1
    assert counts(viewed)["src"] == 100
    # One row per batch in the views, each counting its batch's rows once.
    assert viewed.query("SELECT sum(n), sum(s) FROM sums").result_rows == [(100, sum(range(100)))]
    assert viewed.command("SELECT sum(n) FROM sums2") == 100
