"""Batches of a binary format (Parquet, Arrow, Native): inserted whole, dead-lettered whole.

A line-format batch that ClickHouse rejects for its data is bisected down to the
records at fault (:mod:`chworkers.clickhouse.inserts`); a Parquet or Arrow batch cannot
be cut between rows without decoding it, so it is sent as one request, and when
ClickHouse rejects its data (:data:`DATA_ERROR_CODES`: a type it cannot convert, a
page it cannot decompress) the batch goes whole to the dead letters
(base64, with the error) and leaves the spool: the pipeline goes on with the next
batch instead of retrying data that can never go in. Any other failure (ClickHouse
down, a missing table) is the batch's failure as usual: kept and retried.

A file the source cannot read at all goes to the dead letters from the source
(:func:`file_letter`): its path, the rows at fault and the error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from chworkers.clickhouse.inserts import ROW_ERROR_CODES, InsertResult, Rejected
from chworkers.daemon.batchfile import SpooledBatch
from chworkers.daemon.deadletter import DeadLetters
from chworkers.errors import ColumnarFileError, ServerError

__all__ = ["DATA_ERROR_CODES", "file_letter", "insert_whole"]

#: ClickHouse refusing a binary batch's data: the text formats' row errors, and a
#: compressed page it cannot decompress (a corrupt Parquet row group sent whole).
DATA_ERROR_CODES = ROW_ERROR_CODES | {271}  # CANNOT_DECOMPRESS


def insert_whole(send: Callable[[], Future[Any]], batch: SpooledBatch) -> Future[InsertResult]:
    """Send ``batch`` as one request; its data rejected -> the batch as its one rejected
    record (the daemon writes it to the dead letters before it leaves the spool)."""
    out: Future[InsertResult] = Future()

    def done(future: Future[Any]) -> None:
        error = future.exception()
        if error is None:
            written = future.result()
            if isinstance(written, InsertResult):
                out.set_result(written)
            else:
                rows = written if isinstance(written, int) else batch.rows
                out.set_result(InsertResult(rows=rows, bytes=None, requests=1))
        elif isinstance(error, ServerError) and error.code in DATA_ERROR_CODES:
            rejected = Rejected(record=batch.payload, error=error, rows=max(1, batch.rows))
            out.set_result(InsertResult(rows=0, bytes=None, requests=1, rejected=(rejected,)))
        else:
            out.set_exception(error)

    send().add_done_callback(done)
    return out


def file_letter(dead_letters: DeadLetters) -> Callable[[str, str, ColumnarFileError], None]:
    """The columnar file source's ``bad_file``: a dead letter naming the file and rows."""

    def write(pipeline: str, table: str, error: ColumnarFileError) -> None:
        record = json.dumps({"file": error.path, "rows": error.rows})
        dead_letters.write_errors(
            table,
            [(record.encode(), error)],
            reason="unreadable file",
            pipeline=pipeline,
            rows=_row_count(error.rows),
        )

    return write


def _row_count(rows: str) -> int:
    """How many rows ``"first-end"`` (end excluded) names; 1 when unknown (``"all"``:
    a file that cannot be read at all is one dead letter)."""
    first, _, end = rows.partition("-")
    if first.isdigit() and end.isdigit() and int(end) > int(first):
        return int(end) - int(first)
    return 1
