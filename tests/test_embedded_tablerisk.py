"""The swallowed-errors check after a streaming insert, skipped only where it cannot matter.

chDB's streaming insert swallows errors a table's sink or a materialized view throws, so
the endpoint reads ``system.errors`` after an insert (chworkers/embedded/swallowed.py). It
skips that query for a table that cannot throw them (a plain Memory/Null/Log table with
no view, constraint, Nested arrays or column expression that may throw) and remembers which tables those are until the
next DDL statement: a view or constraint added later must bring the check back.
"""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from chworkers.embedded.tablerisk import may_throw, target


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("INSERT INTO t", (None, "t")),
        ("insert into table db.t (a, b)", ("db", "t")),
        ("INSERT INTO `my db`.`t``x`", ("my db", "t`x")),
        ('INSERT INTO "d"."t" SETTINGS async_insert=0', ("d", "t")),
        ("INSERT INTO /* c */ t", (None, "t")),
        ("INSERT INTO FUNCTION remote('h', db.t)", None),
        ("INSERT INTO TABLE FUNCTION file('x.csv')", None),
        ("SELECT 1", None),
    ],
)
def test_the_insert_target_is_read_from_the_statement(
    statement: str, expected: tuple[str | None, str] | None
) -> None:
    assert target(statement) == expected


def _insert(client: Client, table: str, k: int) -> None:
    client.raw_insert(table, None, b'{"k":%d}\n' % k, fmt="JSONEachRow")


def test_a_view_added_to_a_checked_free_table_brings_the_check_back(ch_client: Client) -> None:
    ch_client.command("CREATE TABLE src (k UInt64) ENGINE = Null")
    ch_client.command("CREATE TABLE dst (k UInt64) ENGINE = Memory")
    _insert(ch_client, "src", 42)  # learned: no check needed for src
    ch_client.command(
        "CREATE MATERIALIZED VIEW mv TO dst AS "
        "SELECT k + throwIf(k = 42, 'view refused 42') AS k FROM src"
    )
    with pytest.raises(DatabaseError, match="view refused 42"):
        _insert(ch_client, "src", 42)
    _insert(ch_client, "src", 7)
    assert ch_client.query("SELECT k FROM dst").result_columns == [[7]]


@pytest.mark.parametrize(
    ("kind", "expression", "throws"),
    [
        ("", "", False),
        ("ALIAS", "throwIf(k > 5)", False),  # computed when read, not when written
        ("DEFAULT", "throwIf(k > 5, 'no')", True),
        ("MATERIALIZED", "toUInt8(s)", True),
        ("EPHEMERAL", "throwIf(k > 5)", True),
        ("DEFAULT", "k", True),  # a column's value converted to another type may throw
        ("DEFAULT", "'a' || toString(throwIf(k > 5))", True),
        ("DEFAULT", "'a', throwIf(1), 'b'", True),
        ("DEFAULT", "0", False),
        ("DEFAULT", "-1.5e3", False),
        ("DEFAULT", "'it\\'s'", False),
        ("DEFAULT", "NULL", False),
        ("DEFAULT", "[]", False),
        ("DEFAULT", "now()", False),
        ("DEFAULT", "now64(3, 'UTC')", False),
        ("DEFAULT", "generateUUIDv4()", False),
        ("EPHEMERAL", "defaultValueOfTypeName('UInt8')", False),
    ],
)
def test_which_column_expressions_may_throw(kind: str, expression: str, throws: bool) -> None:
    assert may_throw(kind, expression) is throws


def test_an_expression_column_added_later_brings_the_check_back(ch_client: Client) -> None:
    ch_client.command("CREATE TABLE e (k UInt64) ENGINE = Memory")
    _insert(ch_client, "e", 9)  # learned: no check needed for e
    ch_client.command("ALTER TABLE e ADD COLUMN v UInt8 MATERIALIZED throwIf(k = 9, 'no 9')")
    with pytest.raises(DatabaseError, match="no 9"):
        _insert(ch_client, "e", 9)
    _insert(ch_client, "e", 7)
    assert ch_client.query("SELECT k FROM e ORDER BY k").result_columns == [[7, 9]]


def test_a_table_made_again_with_a_constraint_is_checked(ch_client: Client) -> None:
    ch_client.command("CREATE TABLE c (k UInt64) ENGINE = Memory")
    _insert(ch_client, "c", 9)
    ch_client.command("DROP TABLE c")
    ch_client.command(
        "CREATE TABLE c (k UInt64, CONSTRAINT small CHECK k < 5) ENGINE = MergeTree ORDER BY k"
    )
    with pytest.raises(DatabaseError, match="small"):
        _insert(ch_client, "c", 9)
    assert ch_client.command("SELECT count() FROM c") == 0


def test_a_table_of_the_same_name_elsewhere_keeps_the_check(ch_client: Client) -> None:
    db = ch_client.command("SELECT currentDatabase()")
    ch_client.command("CREATE TABLE plain (k UInt64) ENGINE = Memory")
    _insert(ch_client, "plain", 1)
    ch_client.command(f"CREATE DATABASE IF NOT EXISTS `{db}_other`")
    try:
        ch_client.command(f"CREATE TABLE `{db}_other`.dst (k UInt64) ENGINE = Memory")
        ch_client.command(
            f"CREATE MATERIALIZED VIEW `{db}_other`.mv TO `{db}_other`.dst AS "
            f"SELECT k + throwIf(k = 3, 'refused 3') AS k FROM `{db}`.plain"
        )
        with pytest.raises(DatabaseError, match="refused 3"):
            _insert(ch_client, "plain", 3)
    finally:
        ch_client.command(f"DROP DATABASE `{db}_other`")
