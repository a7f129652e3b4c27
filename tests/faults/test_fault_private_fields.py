"""The connection pool does not reach into the connections it lends.

The pool read and wrote a connection's private fields (``_owner``, ``_owner_pid``,
``_retired``, ``_pid``), so a change inside
:class:`~chworkers.clickhouse.connection.Connection` could break the pool silently.
It asks the connection now (``owner``, ``adopt``, ``owned_by``, ``opened_in``,
``retire``). What chworkers must take from clickhouse-connect's private parts (no public
switch exists for its retry of a remotely closed insert, nor for the HTTP status of an
error) is done in one place, ``chworkers/clickhouse/driver.py``, which says why.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "chworkers"
POOL_MODULES = ("pool.py", "poolbase.py", "poolstate.py", "pooloptions.py", "shardpools.py")


def private_reads(path: Path) -> list[str]:
    """``obj._name`` for any ``obj`` but ``self`` and ``cls`` (dunders aside)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_pool_reaches_into_no_other_object() -> None:
    found = [
        read
        for name in POOL_MODULES
        for read in private_reads(PACKAGE / "clickhouse" / name)
        # poolbase's housekeeping thread holds its own pool by a weak reference.
        if not read.split(": ", 1)[1].startswith(("pool._state", "pool._maintain"))
    ]
    assert found == []


def test_clickhouse_connects_private_parts_are_used_in_driver_py_only() -> None:
    users = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "_backend" in path.read_text()
    )
    assert users == ["clickhouse/driver.py"]
