"""The endpoint's statement routing: where an INSERT's data starts, which FORMAT."""

from __future__ import annotations

import pytest

from chworkers.embedded import sql

CASES = [
    (b"INSERT INTO t FORMAT CSV\n1,2\n", "INSERT INTO t", "CSV", b"1,2\n"),
    (
        b"INSERT INTO t (a, b) FORMAT Native\n\x01\x02",
        "INSERT INTO t (a, b)",
        "Native",
        b"\x01\x02",
    ),
    (b"insert into db.t format TSV 1\t2\n", "insert into db.t", "TSV", b"1\t2\n"),
    (b"INSERT INTO t FORMAT CSV\r\n1,2", "INSERT INTO t", "CSV", b"1,2"),
    (b"INSERT INTO t VALUES (1, 'FORMAT x')", "INSERT INTO t", "Values", b" (1, 'FORMAT x')"),
    (
        b"/* FORMAT no */ INSERT -- FORMAT no\n INTO `FORMAT` SETTINGS x = 'FORMAT' FORMAT JSONEachRow\n{}",
        "/* FORMAT no */ INSERT -- FORMAT no\n INTO `FORMAT` SETTINGS x = 'FORMAT'",
        "JSONEachRow",
        b"{}",
    ),
    (
        b"INSERT INTO FUNCTION file('a.csv', 'CSV', 'a UInt8') FORMAT CSV\n1\n",
        "INSERT INTO FUNCTION file('a.csv', 'CSV', 'a UInt8')",
        "CSV",
        b"1\n",
    ),
]


@pytest.mark.parametrize(("text", "statement", "fmt", "data"), CASES)
def test_insert_head_at_every_split(text: bytes, statement: str, fmt: str, data: bytes) -> None:
    head = sql.parse_insert(text, complete=True)
    assert head is not None
    assert (head.statement, head.fmt, text[head.data_offset :]) == (statement, fmt, data)
    # Fed in two pieces cut anywhere, the answer is the same or "need more".
    for cut in range(len(text)):
        try:
            partial = sql.parse_insert(text[:cut], complete=False)
        except sql.NeedMoreInput:
            continue
        assert partial == head, cut


@pytest.mark.parametrize(
    "text",
    [
        b"SELECT 1",
        b"INSERT INTO t SELECT * FROM s",
        b"INSERT INTO t (a) WITH 1 AS x SELECT x",
        b"INSERT INTO t FROM INFILE 'x.csv' FORMAT CSV",
        b"CREATE TABLE t (a UInt8) ENGINE = Memory",
    ],
)
def test_not_an_insert_with_inline_data(text: bytes) -> None:
    assert sql.parse_insert(text, complete=True) is None


def test_output_format() -> None:
    assert sql.output_format(b"SELECT 1 FORMAT JSONEachRow") == "JSONEachRow"
    assert sql.output_format(b"SELECT 'FORMAT CSV' AS x") is None
    assert sql.output_format(b"SELECT * FROM (SELECT 1 FORMAT CSV) FORMAT TSV") == "TSV"
    assert sql.output_format(b"SELECT 1 -- FORMAT CSV") is None


def test_first_keyword() -> None:
    assert sql.first_keyword(b"  /* c */ ((SELECT 1))") == "SELECT"
    assert sql.first_keyword(b"with x as (select 1) select * from x") == "WITH"
    assert sql.first_keyword(b"") == ""


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (b"SET a = 1, b = 'x,y'", {"a", "b"}),
        (b"set max_threads=3", {"max_threads"}),
        (b"/* note */ SET a = (1, 2), `c` = [1, 2]", {"a", "c"}),
        (b"SET flag", {"flag"}),
        (b"SELECT 1", set()),
        (b"SET ROLE NONE", set()),
    ],
)
def test_assigned_settings(text: bytes, names: set[str]) -> None:
    assert sql.assigned_settings(text) == names


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (b"INSERT INTO t", {}),
        (b"INSERT INTO t (a) SETTINGS async_insert=1", {"async_insert": "1"}),
        (
            b"INSERT INTO t SETTINGS async_insert = 1, log_comment = 'it''s', x = true",
            {"async_insert": "1", "log_comment": "it's", "x": "true"},
        ),
        (b"INSERT INTO t (a) SELECT 1 SETTINGS max_threads = 2", {"max_threads": "2"}),
    ],
)
def test_settings_clause(statement: bytes, expected: dict[str, str]) -> None:
    assert sql.settings_clause(statement) == expected
