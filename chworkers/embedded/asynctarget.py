"""What a flush of the asynchronous insert queue needs to know of its table, and the
staging table its entries are parsed into.

Each entry's data is parsed on its own into a temporary ``Memory`` table with the
target's columns and their defaults (so a row's defaults are computed as the target
would), without its ``CONSTRAINT``s: as ClickHouse's ``processData``, where parsing an
entry only reads its data, and the constraints are checked by the flush's one insert,
on the whole block (``CheckConstraintsTransform`` in the insert chain), so a violation
fails the flush, every entry of it. (A ``Memory`` table made ``AS`` the target checked
them per entry instead, and chDB's streaming insert swallows VIOLATED_CONSTRAINT: an
entry with a bad row was answered as written and nothing of it was.)

The facts (storage directory, deduplication window, columns) are read once per table
and kept until a statement may have changed a table (:mod:`chworkers.embedded.tablerisk`'s
generation): a ``system.tables`` query that reads ``engine_full`` costs several chDB
queries.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from chworkers.embedded import queries, tablerisk
from chworkers.embedded.asyncdedup import window
from chworkers.embedded.exceptions import clickhouse_error
from chworkers.embedded.queries import quote_ident
from chworkers.errors import ServerError

UNKNOWN_TABLE = (60, "UNKNOWN_TABLE")
_NOT_GIVEN = ("MATERIALIZED", "ALIAS", "EPHEMERAL")


def unknown_table(database: str, table: str) -> ServerError:
    return clickhouse_error(UNKNOWN_TABLE, f"Table {database}.{table} does not exist")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    #: DEFAULT, MATERIALIZED, ALIAS, EPHEMERAL or ''.
    kind: str
    expression: str

    def definition(self) -> str:
        text = f"{quote_ident(self.name)} {self.type}"
        if self.kind:
            text += f" {self.kind} {self.expression}".rstrip()
        return text


@dataclass(frozen=True)
class Target:
    database: str
    table: str
    #: The table's data directory (or ``db.table`` if it has none).
    storage: str
    #: How many recent block ids it keeps (0: it does not deduplicate).
    window: int
    columns: tuple[Column, ...]
    #: Its ``PARTITION BY`` expression ('' without one: one partition).
    partition_key: str = ""

    @property
    def stored(self) -> list[str]:
        """The columns an insert may give (not MATERIALIZED, ALIAS or EPHEMERAL): the
        flush copies them from the staging table as they are."""
        return [c.name for c in self.columns if c.kind not in _NOT_GIVEN]

    @property
    def nested(self) -> bool:
        """Whether it has ``Nested`` arrays (a row whose arrays differ in length is
        refused at commit, which chDB's streaming insert swallows)."""
        return any("." in c.name and c.type.startswith("Array(") for c in self.columns)

    def create_staging(self, conn: Any, tmp: str) -> bool:
        """Create the staging table ``tmp``; whether its entries' inserts need the
        swallowed-errors check (see :mod:`chworkers.embedded.swallowed`)."""
        columns = ", ".join(c.definition() for c in self.columns)
        try:
            queries.run(conn, f"CREATE TEMPORARY TABLE {tmp} ({columns}) ENGINE = Memory")
            # A column expression that throws, computed in the staging table, is
            # swallowed as much as Nested arrays of different lengths.
            return self.nested or any(
                tablerisk.may_throw(c.kind, c.expression) for c in self.columns
            )
        except ServerError:
            # A column chDB describes in a way it does not read back: made as the
            # target, constraints and all, each entry checked on its own.
            target = f"{quote_ident(self.database)}.{quote_ident(self.table)}"
            queries.run(conn, f"CREATE TEMPORARY TABLE {tmp} AS {target} ENGINE = Memory")
            return True


class Targets:
    """:class:`Target` per table, until the next statement that may change one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], tuple[int, Target]] = {}

    def get(self, conn: Any, database: str, table: str) -> Target:
        generation = tablerisk.risks.generation
        with self._lock:
            known = self._known.get((database, table))
        if known is not None and known[0] == generation:
            return known[1]
        res = queries.run(
            conn,
            "SELECT engine, engine_full, data_paths[1], partition_key FROM system.tables "
            "WHERE database = {db:String} AND name = {t:String}",
            "JSONCompactEachRow",
            {"db": database, "t": table},
        )
        line = res.bytes().strip()
        if not line:
            raise unknown_table(database, table)
        engine, engine_full, path, partition_key = json.loads(line.splitlines()[0])
        res = queries.run(
            conn,
            f"DESCRIBE TABLE {quote_ident(database)}.{quote_ident(table)}",
            "JSONCompactEachRow",
        )
        described = [json.loads(row) for row in res.bytes().splitlines() if row.strip()]
        target = Target(
            database=database,
            table=table,
            storage=str(path) or f"{database}.{table}",
            window=window(str(engine), str(engine_full)),
            columns=tuple(Column(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in described),
            partition_key=str(partition_key or ""),
        )
        with self._lock:
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[(database, table)] = (generation, target)
        return target


#: The endpoint's one registry (chDB's tables are the process's).
targets = Targets()
