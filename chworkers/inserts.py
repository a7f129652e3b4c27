"""The task a worker runs for a spooled batch.

It inserts the batch's bytes as they are, with the batch's deduplication token. When
ClickHouse rejects the data itself (a parse error, a wrong type), the batch is bisected
(:func:`~chworkers.deadletter.insert_splitting`) so that every good row still lands
and the bad ones come back to the daemon, which writes them to the dead-letter
directory. Any other error propagates, and the worker's retry policy (then the
dispatcher's backoff) decides what happens next: the batch stays spooled until it lands.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chworkers.deadletter import insert_splitting, is_row_error
from chworkers.errors import ServerError


def insert_batch(
    conn: Any,
    table: str,
    payload: bytes,
    fmt: str,
    token: str,
    settings: Mapping[str, Any],
    quoted_newlines: bool,
) -> tuple[int, list[Any]]:
    """Insert one spooled batch; returns (rows written, rejected records)."""

    def insert(chunk: bytes, chunk_token: str) -> int:
        summary = conn.raw_insert(
            table, chunk, fmt=fmt, settings=settings, deduplication_token=chunk_token
        )
        return int(summary.written_rows)

    try:
        return insert(payload, token), []
    except ServerError as exc:
        if not is_row_error(exc):
            raise
        result = insert_splitting(
            payload, token, insert, quoted_newlines=quoted_newlines, first_error=exc
        )
        return result.rows_inserted, result.rejected
