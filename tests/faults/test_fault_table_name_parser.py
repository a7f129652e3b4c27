"""One parser of ``[db.]table`` names for every statement the endpoint routes by table.

The names of ``TRUNCATE``, ``ALTER ... DROP PARTITION`` (asyncddl), ``INSERT INTO``
(tablerisk) and ``SYSTEM FLUSH ASYNC INSERT QUEUE`` (asyncinsert) were read by three
copies of the same loop, on tablerisk's private ``_unquote``: a fix to one (an escape,
a comment) would have left the others reading another table's name, and the
asynchronous inserts' ids of one table forgotten for another. They now all go through
``sql.table_name`` / ``sql.unquote``, and must agree on every spelling.
"""

from __future__ import annotations

import inspect

import pytest

from chworkers.embedded import asyncddl, asyncinsert, sql, tablerisk

NAMES = [
    ("ev", (None, "ev")),
    ("db.ev", ("db", "ev")),
    ("`my db`.`e``v`", ("my db", "e`v")),
    ('"db"."e\\"v"', ("db", 'e"v')),
    ("`a\\\\b`", (None, "a\\b")),
    ("db /* c */ . /* c */ ev", ("db", "ev")),
]


@pytest.mark.parametrize(("spelled", "name"), NAMES, ids=[n for n, _ in NAMES])
def test_every_statement_reads_a_name_alike(spelled: str, name: tuple[str | None, str]) -> None:
    assert sql.table_name(sql._tokens(spelled.encode(), True), 0) == name
    assert asyncddl.truncated(f"TRUNCATE TABLE IF EXISTS {spelled}".encode()) == name
    assert asyncddl.altered_parts(f"ALTER TABLE {spelled} DROP PARTITION 1".encode()) == name
    assert tablerisk.target(f"INSERT INTO TABLE {spelled} FORMAT CSV") == name
    flushed = asyncinsert.flush_targets(f"SYSTEM FLUSH ASYNC INSERT QUEUE {spelled}".encode())
    assert flushed == [name]


def test_no_module_keeps_its_own_copy() -> None:
    for module in (asyncddl, asyncinsert, tablerisk):
        source = inspect.getsource(module)
        assert "_unquote" not in source, module.__name__
