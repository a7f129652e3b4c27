"""Splitting a spooled batch into one part per shard, as a Distributed table would.

:func:`split_records` reads each record's key fields (:class:`~chworkers.daemon.keyfields.KeyReader`,
typed by the table's columns), evaluates the pipeline's bound sharding key on them
column-wise and routes each row with the cluster's :class:`~chworkers.clickhouse.sharding.ShardRouter`,
so each row goes to exactly the shard a ``Distributed`` table with the same key and
weights would insert it into. Records keep their order within a part, a ``*WithNames``
header starts every part, and the same batch always splits into the same parts (each
with :func:`~chworkers.clickhouse.dedup.shard_token` of the batch's token), so a split
made again after a crash inserts nothing twice. A record whose key cannot be read
comes back in ``rejected`` with the reason, for the dead letters.

Under a random key (``rand()``) the batch goes whole to one shard, picked by weight
from its token, the same when the batch is split again (:func:`random_part`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from chworkers.clickhouse.dedup import shard_token
from chworkers.clickhouse.inserts import LINE_FORMATS
from chworkers.clickhouse.inserts import split_records as frame
from chworkers.clickhouse.sharding import BoundShardingKey, ShardRouter
from chworkers.daemon.keycolumns import Column
from chworkers.daemon.keyfields import KeyReader
from chworkers.daemon.spool import PartSpec
from chworkers.errors import BatchError, RecordKeyError

__all__ = ["Split", "random_part", "split_records"]


@dataclasses.dataclass(frozen=True)
class Split:
    """A batch's parts (only shards that get rows, in shard order) and the records whose
    key could not be read."""

    parts: tuple[PartSpec, ...]
    rejected: tuple[tuple[bytes, RecordKeyError], ...] = ()


def split_records(
    payload: bytes,
    *,
    format: str,
    token: str,
    key: BoundShardingKey,
    columns: Sequence[Column],
    router: ShardRouter,
) -> Split:
    """Split ``payload`` (whole records of ``format``) by ``key`` over ``router``'s
    shards; each part's meta says its ``shard`` (an index into the cluster's shards)."""
    records = frame(payload, quoted_newlines=LINE_FORMATS[format].quoted_newlines)
    header = b""
    if LINE_FORMATS[format].header and records:
        header, records = records[0], records[1:]
    records = [r for r in records if r.strip()]
    rejected: list[tuple[bytes, RecordKeyError]] = []
    try:
        reader = KeyReader(format, key.fields, columns, header=header)
    except RecordKeyError as exc:  # the header lacks the key: no record can be routed
        return Split((), tuple((header + r, exc) for r in records))
    indexes, rows, failed = reader.read_all(records)
    rejected.extend((header + records[i], exc) for i, exc in failed)
    kept = [records[i] for i in indexes]
    values: list[list[int | bytes]] = [list(column) for column in zip(*rows, strict=True)]
    if not values:
        values = [[] for _ in key.fields]
    if not kept:
        return Split((), tuple(rejected))
    try:
        keys = key.evaluate(values)
    except BatchError as exc:  # a value the reader let through and the key refuses
        bad = int(getattr(exc, "row", 0) or 0)
        rejected.append((header + kept[bad], RecordKeyError(str(exc), field="")))
        rest = Split((), ())
        if len(kept) > 1:
            rest = split_records(
                header + b"".join(kept[:bad] + kept[bad + 1 :]),
                format=format,
                token=token,
                key=key,
                columns=columns,
                router=router,
            )
        return Split(rest.parts, tuple(rejected) + rest.rejected)
    parts = []
    for shard, positions in enumerate(router.split(keys)):
        if len(positions):
            body = header + b"".join(kept[i] for i in positions)
            parts.append(
                PartSpec(body, len(positions), shard_token(token, shard), {"shard": shard})
            )
    return Split(tuple(parts), tuple(rejected))


def random_part(payload: bytes, *, rows: int, token: str, router: ShardRouter) -> PartSpec:
    """The whole batch as one part for a shard picked by weight from its token, so that
    the same batch goes to the same shard when it is split again (a broker's batch
    rebuilt from its manifest after a crash)."""
    shard = router.token_shard(token)
    return PartSpec(payload, rows, shard_token(token, shard), {"shard": shard})
