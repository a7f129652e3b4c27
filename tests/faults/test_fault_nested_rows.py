"""Regression tests: Nested data and rows a table's checks refuse are neither lost nor stuck.

* ``{"n": {"x": [..], "y": [..]}}``, the natural JSON shape of a ``Nested`` column, was an
  unknown field without ``input_format_import_nested_json`` and, with the pipelines'
  default ``unknown_fields = "ignore"``, silently dropped: the row landed with empty
  arrays. JSONEachRow pipelines now send the setting.
* A row whose ``Nested`` arrays differ in length (SIZES_OF_ARRAYS_DONT_MATCH, 190) or that
  fails a ``CONSTRAINT ... CHECK`` (VIOLATED_CONSTRAINT, 469) is the data's fault, but the
  bisection did not count these codes as row errors: a ClickHouse server failed the whole
  batch again and again (held in the spool as a permanent error). They are row errors
  now: the row goes to the dead letters and the rest is inserted.
* The embedded endpoint answered both with 200 and inserted nothing (chDB's streaming
  insert swallows what the table's sink throws); it now answers the error.
"""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from chworkers import Supervisor
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tables(ch_client: Client) -> Client:
    ch_client.command(
        "CREATE TABLE nest (i UInt32, n Nested(x UInt32, y String)) ENGINE = MergeTree ORDER BY i"
    )
    ch_client.command(
        "CREATE TABLE checked (i UInt32, CONSTRAINT small CHECK i < 100) "
        "ENGINE = MergeTree ORDER BY i"
    )
    return ch_client


def test_the_endpoint_answers_what_the_table_refused(tables: Client) -> None:
    with pytest.raises(DatabaseError, match="SIZES_OF_ARRAYS_DONT_MATCH"):
        tables.raw_insert("nest", None, b'{"i":1,"n.x":[1,2],"n.y":["a"]}\n', fmt="JSONEachRow")
    with pytest.raises(DatabaseError, match="VIOLATED_CONSTRAINT"):
        tables.raw_insert("checked", None, b'{"i":500}\n', fmt="JSONEachRow")
    tables.raw_insert("checked", None, b'{"i":5}\n', fmt="JSONEachRow")  # not blamed after
    assert tables.command("SELECT count() FROM nest") == 0
    assert tables.command("SELECT count() FROM checked") == 1


def test_a_pipeline_lands_nested_objects_and_dead_letters_refused_rows(
    endpoint: EmbeddedClickHouse, database: str, tables: Client
) -> None:
    nest = PipelineSettings(name="n", table="nest").settings
    checked = PipelineSettings(name="c", table="checked").settings
    nested = [b'{"i":%d,"n":{"x":[%d,%d],"y":["a","b"]}}\n' % (i, i, i + 1) for i in range(20)]
    bad_nested = b'{"i":99,"n":{"x":[1,2,3],"y":["a"]}}\n'
    numbers = b"".join(b'{"i":%d}\n' % i for i in (1, 2, 500, 3, 700, 4))
    with Supervisor(f"{endpoint.url}/{database}", workers=1) as sup:
        # The daemon's own call for a spooled batch.
        first = sup.insert_raw(
            "nest",
            b"".join([*nested[:10], bad_nested, *nested[10:]]),
            "JSONEachRow",
            settings=nest,
            deduplication_token="b1",
            split_bad_rows=True,
        ).result(60)
        second = sup.insert_raw(
            "checked",
            numbers,
            "JSONEachRow",
            settings=checked,
            deduplication_token="b2",
            split_bad_rows=True,
        ).result(60)
    assert [r.record for r in first.rejected] == [bad_nested]
    assert first.rejected[0].error.code == 190
    assert sorted(r.record for r in second.rejected) == [b'{"i":500}\n', b'{"i":700}\n']
    assert {r.error.code for r in second.rejected} == {469}
    rows = tables.query("SELECT i, n.x, n.y FROM nest ORDER BY i").result_rows
    assert rows == [(i, [i, i + 1], ["a", "b"]) for i in range(20)]
    assert tables.query("SELECT i FROM checked ORDER BY i").result_columns == [[1, 2, 3, 4]]
