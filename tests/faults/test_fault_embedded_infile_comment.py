"""Regression test: an INSERT whose head ends in a ``--`` comment still inserts its rows.

A small insert into a table that needs the swallowed-errors check runs as
``INSERT ... FROM INFILE '/proc/self/fd/N' ... FORMAT X``, made by putting those
clauses into the client's statement head. They were joined with spaces, so after a
head ending in a line comment (``INSERT INTO t -- note``, the FORMAT on the next line)
they were part of the comment: chDB ran ``INSERT INTO t`` with no data and answered
an error instead of inserting. Each part now goes on a line of its own.
"""

from __future__ import annotations

import urllib.parse

from httpcall import call

from chworkers.embedded import EmbeddedClickHouse


def test_a_line_comment_before_format(endpoint: EmbeddedClickHouse, database: str) -> None:
    target = "/?" + urllib.parse.urlencode({"database": database})
    ddl = b"CREATE TABLE t (a UInt32, s String) ENGINE = MergeTree ORDER BY a"
    assert call(endpoint, target, ddl)[0] == 200
    for body in (
        b"INSERT INTO t -- a note\nFORMAT TSV\n1\tx\n",
        b"INSERT INTO t -- a note\nSETTINGS max_threads = 1 -- another\nFORMAT TSV\n2\ty\n",
    ):
        status, _, text = call(endpoint, target, body)
        assert status == 200, text
    status, _, text = call(endpoint, target, b"SELECT count(), sum(a) FROM t")
    assert (status, text) == (200, b"2\t3\n")
