"""The Native encoder uses clickhouse-connect's public API only, and says so loudly when
another clickhouse-connect would make it give way.

It read private fields of clickhouse-connect's types (an Enum's ``_name_map``, a
Decimal's ``_mult``, an integer's ``_array_type``) and called their private
``_write_column_binary``: a clickhouse-connect that renamed one would have turned every
fast writer of that type into a silent fallback (``_ours`` catches AttributeError), and
the speed of ``Supervisor.insert`` with it, with nothing failing. They are now a type's
public attributes (``type_def``, ``scale``, ``base_type``) and ``write_column_data``.
What only a run can tell, that a writer still writes the installed clickhouse-connect's
bytes, is checked here for every type the encoder covers: a writer that stops agreeing
fails this test instead of logging a warning in production.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from chworkers.clickhouse import nativecols, nativewriters

PACKAGE = Path(__file__).resolve().parents[2] / "chworkers" / "clickhouse"
MODULES = ("nativecols.py", "nativewriters.py")

#: One type per writer, and their Nullable and LowCardinality forms.
COVERED = [
    *("DateTime", "DateTime('Asia/Tokyo')", "DateTime64(3)", "DateTime64(6, 'UTC')"),
    *("Date", "Date32", "UUID", "FixedString(2)", "Bool"),
    *("Enum8('a' = 1, 'b' = -2)", "Enum16('x' = 1000)", "Decimal(9, 2)", "Decimal(18, 4)"),
    *("Nullable(Int8)", "Nullable(UInt16)", "Nullable(Int32)", "Nullable(UInt64)"),
    *("LowCardinality(String)", "LowCardinality(Nullable(String))"),
    *("Nullable(DateTime)", "Nullable(Date)", "Nullable(UUID)", "Nullable(Decimal(9, 2))"),
    *("Nullable(Enum8('a' = 1))", "Nullable(Bool)", "Nullable(DateTime64(9))"),
]


def _private_uses(path: Path) -> list[str]:
    """``obj._name`` for any ``obj`` but ``self``/``cls``, and imports of private modules."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module not in (None, "__future__")
            and any(part.startswith("_") for part in str(node.module).split("."))
        ):
            found.append(f"{path.name}:{node.lineno}: from {node.module}")
    return found


def test_no_private_name_of_clickhouse_connect_is_used() -> None:
    assert [use for name in MODULES for use in _private_uses(PACKAGE / name)] == []


def test_every_writer_agrees_with_the_installed_clickhouse_connect() -> None:
    import clickhouse_connect

    declined = [t for t in COVERED if nativecols.ColumnEncoder("c", t).writer is None]
    assert declined == [], (
        f"clickhouse-connect {clickhouse_connect.__version__} writes these differently than "
        f"chworkers' Native encoder expects (on Python {sys.version.split()[0]}); they would "
        "fall back to its slower writer: check the conversions in nativewriters.py"
    )
    # Every writer is exercised by one of them.
    used = {nativecols.ColumnEncoder("c", t).writer for t in COVERED}
    assert set(nativewriters.WRITERS.values()) | {nativewriters.low_card_string} <= used
