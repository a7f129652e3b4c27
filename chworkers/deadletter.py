"""Poison data: find the rows ClickHouse rejects, keep them, insert the rest.

When ClickHouse refuses a batch because of its data (a parse error, a wrong type, an
unknown field), :func:`insert_splitting` cuts the batch in halves, again and again,
until every rejected record stands alone, and inserts all the rest. The cuts depend
only on the batch, so a replay after a crash makes the same sub-batches with the same
deduplication tokens, and ClickHouse drops what it already has. Rejected records go
to the :class:`DeadLetters` directory as JSON lines with the error and the original
record, and are counted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from chworkers.errors import ServerError
from chworkers.metrics import Metrics

log = logging.getLogger(__name__)

#: ClickHouse error codes that blame the data of an insert rather than the request or
#: the server: a sub-batch without the offending rows would succeed.
ROW_ERROR_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        7,  # INCORRECT_NUMBER_OF_COLUMNS
        25,  # CANNOT_PARSE_ESCAPE_SEQUENCE
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        32,  # ATTEMPT_TO_READ_AFTER_EOF
        33,  # CANNOT_READ_ALL_DATA
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA (e.g. an unknown JSON field)
        130,  # CANNOT_READ_ARRAY_FROM_TEXT
        131,  # TOO_LARGE_STRING_SIZE
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        376,  # CANNOT_PARSE_UUID
        441,  # CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING
        467,  # CANNOT_PARSE_BOOL
        632,  # UNEXPECTED_DATA_AFTER_PARSED_VALUE
        675,  # CANNOT_PARSE_IPV4
        676,  # CANNOT_PARSE_IPV6
        691,  # UNKNOWN_ELEMENT_OF_ENUM
    }
)


def is_row_error(exc: BaseException) -> bool:
    """True when ``exc`` is ClickHouse rejecting the data, not the request."""
    return isinstance(exc, ServerError) and exc.code in ROW_ERROR_CODES


@dataclasses.dataclass(frozen=True)
class Rejected:
    """One record ClickHouse would not take, and why."""

    record: bytes
    error: ServerError


@dataclasses.dataclass
class SplitResult:
    rows_inserted: int = 0
    inserts: int = 0
    rejected: list[Rejected] = dataclasses.field(default_factory=list)


InsertFn = Callable[[bytes, str], int]
"""``insert(records, dedup_token) -> rows written``; raises on failure."""


def insert_splitting(
    records: bytes,
    token: str,
    insert: InsertFn,
    *,
    quoted_newlines: bool = False,
    first_error: ServerError | None = None,
) -> SplitResult:
    """Insert ``records``; on a row error, bisect and insert everything that parses.

    Errors that are not row errors (the server is down, the table is gone) propagate:
    the batch then stays in the spool and is retried whole later. ``first_error`` is the
    row error a whole-batch insert already got, to skip repeating that insert.
    """
    lines = _split_records(records, quoted_newlines)
    result = SplitResult()
    # Work list of (start, stop, known error); deterministic, depth first, in order.
    stack: list[tuple[int, int, ServerError | None]] = [(0, len(lines), first_error)]
    while stack:
        start, stop, known = stack.pop()
        chunk = b"".join(lines[start:stop])
        if not chunk.strip():
            continue
        error = known
        if error is None:
            try:
                result.rows_inserted += insert(chunk, f"{token}:{start}-{stop}")
                result.inserts += 1
                continue
            except ServerError as exc:
                if not is_row_error(exc):
                    raise
                error = exc
        if stop - start == 1:
            result.rejected.append(Rejected(chunk, error))
            continue
        mid = (start + stop) // 2
        stack.append((mid, stop, None))
        stack.append((start, mid, None))
    return result


def _split_records(records: bytes, quoted_newlines: bool) -> list[bytes]:
    lines = records.splitlines(keepends=True)
    if not quoted_newlines:
        return lines
    out: list[bytes] = []
    pending = b""
    for line in lines:
        pending += line
        if pending.count(b'"') % 2 == 0:
            out.append(pending)
            pending = b""
    if pending:
        out.append(pending)
    return out


class DeadLetters:
    """Appends rejected records to ``<directory>/<table>/<YYYY-MM-DD>.jsonl``."""

    def __init__(
        self, directory: str | os.PathLike[str], *, metrics: Metrics | None = None
    ) -> None:
        self.directory = Path(directory)
        self._metrics = metrics
        self._lock = threading.Lock()

    def write(
        self, table: str, rejected: list[Rejected], *, pipeline: str = "", batch: str = ""
    ) -> Path | None:
        if not rejected:
            return None
        now = time.time()
        folder = self.directory / _safe(table)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (time.strftime("%Y-%m-%d", time.gmtime(now)) + ".jsonl")
        lines = []
        for item in rejected:
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "table": table,
                "pipeline": pipeline,
                "batch": batch,
                "error": {
                    "code": item.error.code,
                    "name": item.error.name,
                    "message": item.error.message,
                },
                "record": item.record.decode("utf-8", "backslashreplace").rstrip("\n"),
            }
            lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
        data = "".join(lines).encode()
        with self._lock, open(path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        log.warning(
            "%d rows for %s rejected by ClickHouse (first: %s); written to %s",
            len(rejected),
            table,
            rejected[0].error.message.splitlines()[0][:200],
            path,
        )
        if self._metrics is not None:
            self._metrics.dead_letter_rows.labels(table=table).inc(len(rejected))
        return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"
