"""Schema evolution: add the columns a JSONEachRow batch has and its table lacks.

Opt-in per pipeline (``schema = "evolve"``). The insert is sent without
``input_format_skip_unknown_fields``, so ClickHouse names a field the table lacks
(INCORRECT_DATA, code 117, "Unknown field found"). Then, in the worker that inserts the
batch (:func:`evolve`):

1. the batch's records are read for their top-level fields the table does not have (the
   table's columns from ``system.columns``), with up to :data:`SAMPLE_VALUES` distinct
   values of each;
2. their types come from ClickHouse's own schema inference over those values
   (``DESCRIBE format(JSONEachRow, ...)``, every value as a one-field record): a field
   whose values are all JSON objects becomes a ``JSON`` column, any other is what
   ClickHouse infers (conflicting numbers and strings widen to ``String``), made
   ``Nullable`` (records without the field hold NULL) unless the pipeline says
   ``evolve_nullable = false``; arrays, maps and tuples cannot be Nullable and stay as
   inferred;
3. each is added with ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` (the name quoted as
   it came), and the insert is sent again.

Two daemons adding the same column race harmlessly: ``IF NOT EXISTS`` makes the second
ALTER a no-op, and if they inferred different types, the rows that do not fit the one
that won fail to parse and are bisected out to the dead letters with ClickHouse's reason,
like any bad row. So are records whose fields cannot be inferred at all (their values
conflict beyond widening, say an array and a number): the field is not added, and the
records carrying it are bisected out with the unknown-field error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any

from chworkers.clickhouse import epochs
from chworkers.errors import ServerError

__all__ = ["Evolve", "evolve", "is_unknown_field", "quote_identifier"]

log = logging.getLogger(__name__)

#: ClickHouse's INCORRECT_DATA, which an unknown JSON field is reported as.
INCORRECT_DATA = 117
#: Distinct values of each new field the inference looks at.
SAMPLE_VALUES = 100
#: Bytes of sample records sent to the inference at most (they travel as a parameter).
SAMPLE_BYTES = 256 * 1024
#: Types that cannot be wrapped in Nullable.
_NOT_NULLABLE = ("Array(", "Map(", "Tuple(", "JSON", "Object(", "Variant(", "Dynamic", "Nullable(")


@dataclasses.dataclass(frozen=True, slots=True)
class Evolve:
    """How a pipeline with ``schema = "evolve"`` adds columns."""

    #: Make added columns ``Nullable`` (where the type can be).
    nullable: bool = True


def is_unknown_field(error: BaseException) -> bool:
    """Whether ``error`` is ClickHouse finding a field the table lacks."""
    return (
        isinstance(error, ServerError)
        and error.code == INCORRECT_DATA
        and "unknown field" in str(error).lower()
    )


def quote_identifier(name: str) -> str:
    """``name`` as a ClickHouse identifier, whatever its characters."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _shown_name(name: str) -> str:
    """A column's name for the log: quoted, as in the ALTER, unless a plain identifier
    (in "user id Nullable(String)" the name would not be told from its type)."""
    return name if _PLAIN_NAME.fullmatch(name) else quote_identifier(name)


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _table_sql(table: str) -> tuple[str, str, str]:
    database, _, name = table.rpartition(".")
    sql = (
        f"{quote_identifier(database)}.{quote_identifier(name)}"
        if database
        else (quote_identifier(name))
    )
    return database, name, sql


def new_fields(data: bytes, columns: set[str]) -> dict[str, list[Any]]:
    """Top-level fields of the JSON records in ``data`` that are not in ``columns``,
    each with up to :data:`SAMPLE_VALUES` distinct values, in order of appearance.
    Lines that are not JSON objects are skipped (ClickHouse rejects them itself)."""
    fields: dict[str, list[Any]] = {}
    seen: dict[str, set[str]] = {}
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        for key, value in record.items():
            if key in columns:
                continue
            values = fields.setdefault(key, [])
            known = seen.setdefault(key, set())
            text = json.dumps(value, sort_keys=True)
            if len(values) < SAMPLE_VALUES and text not in known:
                known.add(text)
                values.append(value)
    return fields


def column_type(inferred: str, values: list[Any], policy: Evolve) -> str:
    """The type of a new column, from the inferred type of its ``values``."""
    if values and all(isinstance(v, dict) for v in values):
        return "JSON"
    base = inferred.strip()
    if base.startswith("Nullable(") and base.endswith(")"):
        base = base[len("Nullable(") : -1]
    if policy.nullable and not base.startswith(_NOT_NULLABLE):
        return f"Nullable({base})"
    return base


def infer_types(conn: Any, fields: dict[str, list[Any]], policy: Evolve) -> dict[str, str]:
    """Each field's column type, by ClickHouse's schema inference; fields it cannot
    infer (conflicting values) are left out, and logged."""
    out: dict[str, str] = {}
    for name, values in fields.items():
        if values and all(isinstance(v, dict) for v in values):
            out[name] = "JSON"
            continue
        sample: list[str] = []
        size = 0
        for value in values:
            line = json.dumps({name: value}, ensure_ascii=False)
            size += len(line) + 1
            if size > SAMPLE_BYTES and sample:
                break
            sample.append(line)
        try:
            described = conn.query(
                "DESCRIBE format(JSONEachRow, {sample:String})",
                parameters={"sample": "\n".join(sample) + "\n"},
                settings={
                    "schema_inference_make_columns_nullable": 0,
                    "input_format_json_try_infer_named_tuples_from_objects": 0,
                    "input_format_max_rows_to_read_for_schema_inference": len(sample) + 1,
                },
            ).result_rows
        except ServerError as exc:
            log.warning("field %r: ClickHouse cannot infer a type for it: %s", name, exc)
            continue
        types = {str(row[0]): str(row[1]) for row in described}
        if name in types:
            out[name] = column_type(types[name], values, policy)
    return out


def evolve(conn: Any, table: str, data: bytes, policy: Evolve) -> list[str]:
    """Add the columns ``table`` lacks for the records in ``data`` (JSONEachRow);
    returns what was added, as ``name Type`` (empty: nothing to add, or nothing that
    could be). ``conn`` is a :class:`~chworkers.clickhouse.connection.Connection`."""
    database, name, sql = _table_sql(table)
    where = "database = {db:String}" if database else "database = currentDatabase()"
    columns = {
        str(row[0])
        for row in conn.query(
            f"SELECT name FROM system.columns WHERE {where} AND table = {{name:String}}",
            parameters={"db": database, "name": name},
        ).result_rows
    }
    fields = new_fields(data, columns)
    if not fields:
        return []
    added: list[str] = []
    shown: list[str] = []
    for field, type_ in infer_types(conn, fields, policy).items():
        conn.command(
            f"ALTER TABLE {sql} ADD COLUMN IF NOT EXISTS {quote_identifier(field)} {type_}",
            idempotent=True,
        )
        added.append(f"{field} {type_}")
        shown.append(f"{_shown_name(field)} {type_}")
    if added:
        # What this process knows of the table's columns (its timestamp columns, whose
        # epoch numbers are rewritten) is looked up again: a new column may be one.
        epochs.forget(conn, table)
        log.info("table %s: added columns %s", table, ", ".join(shown))
    return added
