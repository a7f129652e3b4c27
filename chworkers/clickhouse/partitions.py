"""Split a batch by partition when ClickHouse refuses it for spanning too many.

ClickHouse refuses an INSERT block whose rows fall into more than
``max_partitions_per_insert_block`` partitions (code 252, "Too many partitions for single
INSERT block"), before it writes anything. Retrying the same bytes can never succeed,
and cutting them in halves by position does not help when the partitions are
interleaved (a tenant per row, say) until the pieces are tiny, which makes the many
small parts the limit is there to prevent. So the batch is grouped by partition: all
rows of the first ``limit`` partitions (in order of first appearance) in one sub-batch,
the next ``limit`` in the next, and so on, each row keeping its order.

Where a row's partition comes from: ClickHouse itself evaluates the table's
``PARTITION BY`` on the batch's own bytes, sent back as external data in the batch's
format with the table's insertable columns as its structure and the insert's settings
(``SELECT toString(<partition key>) FROM _batch``). That is exact (the same parser, the
same functions, the same time zone as the insert) where a Python re-implementation of
ClickHouse expressions would not be, and cheap: it runs only for a batch that was
refused, or of a table that refused one lately (:mod:`chworkers.clickhouse.presplit`),
reads it once, and returns a short string per row. A partition key that reads
a ``DEFAULT`` column the records omit is evaluated on the type's default instead of the
column's expression; a group that is still refused then fails as the whole batch did.

The grouping depends only on the batch's bytes (and the table's partition key), so a
replay makes the same sub-batches with the same tokens
(:func:`chworkers.clickhouse.dedup.partition_token`).

The refusal must also be whole: ClickHouse cuts an INSERT of more than
``min_insert_block_size_rows`` rows (about a million by default) into several blocks and
writes each as it goes, so the blocks before the one refused were in the table already
(under the batch's token), and the groups then inserted their rows a second time. So a
request that may be split is sent as one block (:func:`one_block`): refused, it left
nothing; each group is one block too, under its own token, whatever its size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chworkers.errors import ServerError

__all__ = [
    "TOO_MANY_PARTITIONS",
    "group_by_partition",
    "is_too_many_partitions",
    "one_block",
    "partition_keys",
]

#: The code ClickHouse uses for "too many partitions for a single INSERT block" (and for
#: "too many parts", which is transient and retried).
TOO_MANY_PARTITIONS = 252
_MESSAGE = "partitions for single insert block"


def is_too_many_partitions(error: BaseException) -> bool:
    """Whether ``error`` is ClickHouse refusing a block for spanning too many partitions
    (never transient: the same block is refused again)."""
    return (
        isinstance(error, ServerError)
        and error.code == TOO_MANY_PARTITIONS
        and _MESSAGE in str(error).lower()
    )


def one_block(
    settings: Mapping[str, object] | None, data: bytes | bytearray | memoryview
) -> dict[str, object]:
    """``settings`` for an INSERT of the line-format ``data`` that ClickHouse makes into
    one block (so it lands whole or not at all): its block size limits raised to a bound
    of the request's rows and the byte limit of squashing turned off. Limits above that
    are kept.

    The bound is the body's length plus one: a row of a line format takes a byte at
    least (its newline), so no body holds more rows, and it bounds any part of ``data``
    sent alone too. It is known without reading the body (counting its newlines cost
    the daemon 2-3 ms of CPU per 100,000 lines, taken from the server's parsing on a
    machine they share), and ClickHouse makes the same one block of it as of the exact
    count: a limit above the rows there are changes nothing."""
    rows = memoryview(data).nbytes + 1
    out: dict[str, object] = dict(settings or {})
    for name in ("max_insert_block_size", "min_insert_block_size_rows"):
        try:
            given = int(str(out.get(name, 0)))
        except ValueError:
            given = 0
        out[name] = max(given, rows)
    out["min_insert_block_size_bytes"] = 0  # rows alone decide: one block at the end
    return out


def group_by_partition(
    records: Sequence[bytes], keys: Sequence[str], limit: int
) -> list[list[bytes]]:
    """``records`` in groups spanning at most ``limit`` partitions each (``keys[i]`` is
    record ``i``'s partition), partitions in order of first appearance, records in order."""
    if len(records) != len(keys):
        raise ValueError(f"{len(records)} records but {len(keys)} partition keys")
    if limit < 1:
        return [list(records)]
    group_of: dict[str, int] = {}
    groups: list[list[bytes]] = []
    for record, key in zip(records, keys, strict=True):
        index = group_of.get(key)
        if index is None:
            index = group_of[key] = len(group_of) // limit
            if index == len(groups):
                groups.append([])
        groups[index].append(record)
    return groups


def partition_keys(
    conn: Any, table: str, fmt: str, data: bytes, settings: Mapping[str, object] | None
) -> tuple[list[str], int]:
    """Each row's partition in ``data`` (``fmt``, a ``*WithNames`` header included), as
    ClickHouse evaluates ``table``'s partition key, and the insert's
    ``max_partitions_per_insert_block``. ``conn`` is a
    :class:`~chworkers.clickhouse.connection.Connection`."""
    database, _, name = table.rpartition(".")
    where = "database = currentDatabase()" if not database else "database = {db:String}"
    params = {"db": database, "name": name}
    key = conn.command(
        f"SELECT partition_key FROM system.tables WHERE {where} AND name = {{name:String}}",
        parameters=params,
    )
    columns = conn.query(
        f"SELECT name, type FROM system.columns WHERE {where} AND table = {{name:String}} "
        "AND default_kind IN ('', 'DEFAULT') ORDER BY position",
        parameters=params,
    ).result_rows
    query_settings: dict[str, object] = dict(settings or {})
    # One thread, no parallel parsing: the rows come back in the batch's order.
    query_settings.update(max_threads=1, input_format_parallel_parsing=0)
    limit = int(
        conn.command(
            "SELECT getSetting('max_partitions_per_insert_block')", settings=query_settings
        )
    )
    if not isinstance(key, str) or not key.strip():
        return [], limit  # not partitioned: one partition
    from clickhouse_connect.driver.external import ExternalData  # only on this rare path

    batch = ExternalData(
        file_name="_batch",
        data=data,
        fmt=fmt,
        structure=[f"`{c}` {t}" for c, t in columns],
    )
    result = conn.query(
        f"SELECT toString({key}) FROM _batch", settings=query_settings, external_data=batch
    )
    return [str(row[0]) for row in result.result_rows], limit
