"""What ``chworkers run`` does per shard of a sharded cluster, through the supervisor.

Tables are created on every shard on their own (:func:`shard_tables`), and a table's
columns, which type the sharding key's fields, are read from the first shard that
answers (:func:`columns_reader`): a shard that is down does not hold up the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from chworkers.daemon.batchfile import SpooledBatch
from chworkers.daemon.dispatch import shard_of
from chworkers.daemon.keycolumns import Column
from chworkers.daemon.tables import ShardTables, Tables
from chworkers.daemon.workertasks import create_table, table_columns
from chworkers.errors import ChworkersError
from chworkers.workers.supervisor import Supervisor

if TYPE_CHECKING:
    from chworkers.daemon.splitter import Describe  # brings numpy: only with shards

__all__ = ["columns_reader", "shard_tables"]

log = logging.getLogger(__name__)

#: How long one shard may take to describe a table before the next one is asked.
DESCRIBE_TIMEOUT = 30.0


def shard_tables(
    statements: Mapping[str, str],
    supervisor: Supervisor,
    shards: int,
    release: Callable[[SpooledBatch], None],
) -> ShardTables:
    """One :class:`Tables` per shard, each creating the tables on its own shard."""

    def creator(shard: int) -> Callable[[str], Future[Any]]:
        return lambda statement: supervisor.submit_to(shard, create_table, statement)

    return ShardTables(
        [Tables(statements, creator(i), release, where=f"shard {i}: ") for i in range(shards)],
        shard_of,
    )


def columns_reader(supervisor: Supervisor, shards: int) -> Describe:
    """Reads a table's columns from the first shard that answers."""

    def describe(table: str) -> list[Column]:
        errors = []
        for shard in range(shards):
            try:
                rows = supervisor.submit_to(shard, table_columns, table).result(DESCRIBE_TIMEOUT)
            except (ChworkersError, TimeoutError) as exc:
                errors.append(f"shard {shard}: {type(exc).__name__}: {exc}")
                continue
            return [Column(str(n), str(t), str(k)) for n, t, k in rows]
        raise ChworkersError(
            f"no shard could describe table {table}: " + "; ".join(e[:300] for e in errors)
        )

    return describe
