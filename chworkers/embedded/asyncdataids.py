"""Asynchronous entries without a token named as chDB names a synchronous insert of the
same data: by their parsed block's data hash (ClickHouse 26.x's unified block id,
``DeduplicationInfo::getBlockUnifiedHash``), computed by chDB over a flush's staging
table when the entries' columns are all of fixed width
(:func:`chworkers.embedded.blockids.fixed_width`)."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

from chworkers.embedded import blockids, queries, sql
from chworkers.embedded.asynctarget import Target
from chworkers.embedded.queries import quote_ident


def hashed_columns(facts: Target, columns: str | None) -> list[tuple[str, int]] | None:
    """The (quoted name, width) of an entry's block's columns (its column list's, else
    every column an insert may give, in order) if all are of fixed width (see
    :func:`chworkers.embedded.blockids.fixed_width`); None otherwise."""
    types = {c.name: c.type for c in facts.columns}
    if columns is None:
        names = facts.stored
    else:
        toks = sql.tokens(columns.encode("utf-8", "surrogateescape"))
        words = [t for t in toks[0::2] if t.kind in ("word", "quoted")]
        commas = toks[1::2]
        if len(words) != len(toks[0::2]) or any(t.text != b"," for t in commas):
            return None
        names = [sql.unquote(t) for t in words]
    out = []
    for name in names:
        width = blockids.fixed_width(types.get(name, ""))
        if width is None:
            return None
        out.append((quote_ident(name), width))
    return out or None


def data_block_ids(
    conn: Any, table: str, columns: list[tuple[str, int]], counts: list[int]
) -> list[str]:
    """The block id of each entry's rows (``counts`` of them, in order, the staging
    table's rows), as chDB names a synchronous insert of them without a token; '' for
    an entry without rows."""
    ends = list(itertools.accumulate(counts))
    if not ends or not ends[-1]:
        return [""] * len(counts)
    res = queries.run(conn, blockids.data_hashes_sql(table, columns, ends), "JSONCompactEachRow")
    found = {}
    for line in res.bytes().splitlines():
        index, digest = json.loads(line)
        raw = bytes.fromhex(digest)
        lo, hi = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
        found[int(index)] = blockids.data_hash(lo, hi)
    return [found.get(i, "") if counts[i] else "" for i in range(len(counts))]


def without(conn: Any, facts: Target, tmp: str, ranges: list[tuple[int, int]]) -> str:
    """A staging table of ``tmp``'s rows but those of ``ranges`` (row numbers, end
    excluded): the entries found to be duplicates once parsed."""
    out = quote_ident(f"_chworkers_async_{uuid.uuid4().hex}")
    facts.create_staging(conn, out)
    stored = ", ".join(quote_ident(c) for c in facts.stored)
    skip = " OR ".join(f"(_rn >= {a} AND _rn < {b})" for a, b in ranges)
    queries.run(
        conn,
        f"INSERT INTO {out} ({stored}) SELECT {stored} FROM "
        f"(SELECT {stored}, rowNumberInAllBlocks() AS _rn FROM {tmp}) WHERE NOT ({skip}) "
        "SETTINGS max_threads = 1",
    )
    return out
