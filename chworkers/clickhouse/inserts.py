"""The insert task: one request, or a bisection of bad rows within a budget.

Every insert chworkers makes goes through here, in a worker: ``Supervisor.insert``,
``Supervisor.insert_raw`` and the daemon's spooled batches (``insert_raw`` with
``split_bad_rows``). A plain insert is one request with the task's deduplication token.

With a :class:`SplitBudget` (line-delimited formats only: JSONEachRow, CSV, TSV and
their ``*WithNames`` forms), a batch that ClickHouse rejects because of its data (a
parse error, a wrong type, an unknown field: :data:`ROW_ERROR_CODES`) is cut in halves,
again and again, until every rejected record stands alone, and everything else is
inserted. The cuts depend only on the batch, so a replay after a crash makes the same
sub-batches with the same deduplication tokens (:func:`chworkers.clickhouse.dedup.sub_batch_token`)
and ClickHouse drops what it already has. A ``*WithNames`` header is repeated at the
start of every sub-batch.

A batch whose rows all fail would cost ``2n - 1`` requests, so the bisection has a
budget of requests and seconds; once it is spent, the records not yet isolated come
back rejected too (``reason = "budget"``) with the error of the sub-batch that held
them. The worker's heartbeat is beaten before every request, so a long bisection is
never taken for a hung worker. Rejected records come back with the result
(:class:`InsertResult`); the caller (the daemon) writes them to its dead letters.

Errors that are not row errors propagate to the retry layers (see docs/daemon.md,
"Retry layers"): each request is retried by the worker's retry policy; a task that
still fails is the dispatcher's to retry later, whole (sub-batches already inserted are
then dropped by their tokens).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from chworkers.clickhouse import dedup
from chworkers.clickhouse.partitions import group_by_partition, is_too_many_partitions
from chworkers.clickhouse.presplit import Learning
from chworkers.clickhouse.schema import is_unknown_field
from chworkers.errors import ServerError

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
        153,  # ILLEGAL_DIVISION (a column's expression divides by the row's zero)
        190,  # SIZES_OF_ARRAYS_DONT_MATCH (a Nested column's arrays)
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        376,  # CANNOT_PARSE_UUID
        395,  # FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (a column's throwIf the row trips)
        441,  # CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING
        467,  # CANNOT_PARSE_BOOL
        469,  # VIOLATED_CONSTRAINT (a CONSTRAINT ... CHECK the row fails)
        632,  # UNEXPECTED_DATA_AFTER_PARSED_VALUE
        675,  # CANNOT_PARSE_IPV4
        676,  # CANNOT_PARSE_IPV6
        691,  # UNKNOWN_ELEMENT_OF_ENUM
    }
)


@dataclasses.dataclass(frozen=True, slots=True)
class LineFormat:
    """A format whose records end at a newline (outside quotes, for CSV)."""

    #: A newline may sit inside a quoted field (CSV: RFC 4180 doubles quotes in fields).
    quoted_newlines: bool
    #: The first record is a header of column names, repeated in every batch.
    header: bool


#: The line-delimited formats the daemon accepts and the bisection can cut.
LINE_FORMATS: dict[str, LineFormat] = {
    "JSONEachRow": LineFormat(quoted_newlines=False, header=False),
    "CSV": LineFormat(quoted_newlines=True, header=False),
    "CSVWithNames": LineFormat(quoted_newlines=True, header=True),
    "TSV": LineFormat(quoted_newlines=False, header=False),
    "TabSeparated": LineFormat(quoted_newlines=False, header=False),
    "TSVWithNames": LineFormat(quoted_newlines=False, header=True),
}


def is_row_error(exc: BaseException) -> bool:
    """True when ``exc`` is ClickHouse rejecting the data, not the request."""
    return isinstance(exc, ServerError) and exc.code in ROW_ERROR_CODES


@dataclasses.dataclass(frozen=True, slots=True)
class SplitBudget:
    """How far the bisection of a rejected batch may go (both limits apply)."""

    #: Insert requests for the whole task, the first (whole-batch) one included.
    max_requests: int = 1000
    #: Seconds the bisection may take, counted from the rejection of the whole batch.
    max_seconds: float = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class Rejected:
    """One record ClickHouse would not take, and why.

    ``reason`` is ``"rejected"`` (the record alone failed with ``error``) or
    ``"budget"`` (the bisection's budget ran out while the record was in a sub-batch
    that failed with ``error``; the record itself may be fine). ``rows`` is how many
    rows the record holds: 1 for a line, all of a binary batch rejected whole.
    """

    record: bytes
    error: ServerError
    reason: str = "rejected"
    rows: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class InsertResult:
    """What an insert task did.

    ``rows`` and ``bytes`` are ClickHouse's own counts of what it wrote (its query
    summary: ``written_rows``, ``written_bytes``), summed over the requests; ``None``
    when the server sent no summary. ClickHouse counts there the rows of blocks it
    dropped as duplicates of blocks it already had (same deduplication token) as well,
    and its answer does not say how many it dropped: ``replayed`` is how many of
    ``rows`` belong to a replay its caller declared (``replay=True``: sent, and maybe
    counted, by an earlier run); the rest are counted as inserted.
    """

    rows: int | None
    bytes: int | None
    requests: int
    rejected: tuple[Rejected, ...] = ()
    #: Of ``rows``, those of replays: new, or dropped by ClickHouse as duplicates.
    replayed: int = 0


#: ``send(records, dedup_token) -> (written rows, written bytes) | None``; raises on failure.
Send = Callable[[bytes | memoryview, str], "tuple[int, int] | None"]

#: ``partitions(records) -> (each row's partition, max_partitions_per_insert_block)``.
Partitions = Callable[[bytes], "tuple[list[str], int]"]


def run_insert(
    data: bytes | memoryview,
    token: str,
    send: Send,
    *,
    fmt: str | None = None,
    budget: SplitBudget | None = None,
    partitions: Partitions | None = None,
    learning: Learning | None = None,
    evolve: Callable[[bytes], int] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> InsertResult:
    """Insert ``data`` through ``send``; with ``budget``, bisect row errors out.

    ``data`` goes to ``send`` as it is (a view of a memory file is not copied); only a
    refused batch is copied into bytes, to be cut into records.

    ``send`` makes one request (the worker wraps it in its retry policy and beats its
    heartbeat before it). Without a budget, any error propagates. With one, ``fmt``
    must be one of :data:`LINE_FORMATS`. With ``partitions`` (a line format too), a
    request refused for spanning too many partitions is sent again as groups of whole
    partitions (:mod:`chworkers.clickhouse.partitions`); with ``learning`` too, a table
    that refused one is grouped before sending from then on
    (:mod:`chworkers.clickhouse.presplit`). With ``evolve`` (JSONEachRow), a
    request refused for a field the table lacks is sent again once ``evolve(records)``
    added columns (:mod:`chworkers.clickhouse.schema`).
    """
    if evolve is not None:
        send = _evolving(send, evolve)
    if partitions is not None and fmt in LINE_FORMATS:
        send = _by_partition(send, partitions, LINE_FORMATS[fmt], learning or Learning(""))
    counts = _Counts()
    try:
        counts.add(send(data, token))
        return counts.result(())
    except ServerError as exc:
        if budget is None or not is_row_error(exc):
            raise
        counts.requests += 1
        first_error = exc
    if fmt not in LINE_FORMATS:
        raise ValueError(f"cannot split {fmt!r} records: not a line-delimited format")
    started = clock()
    line_format = LINE_FORMATS[fmt]
    records = split_records(_as_bytes(data), quoted_newlines=line_format.quoted_newlines)
    header = b""
    if line_format.header and records:
        header, records = records[0], records[1:]
    rejected: list[Rejected] = []
    # Work list of (start, stop, known error, error of the sub-batch that held it);
    # deterministic, depth first, in order.
    stack: list[tuple[int, int, ServerError | None, ServerError]] = [
        (0, len(records), first_error, first_error)
    ]
    while stack:
        start, stop, known, parent = stack.pop()
        chunk = b"".join(records[start:stop])
        if not chunk.strip():
            continue
        error = known
        if error is None:
            if counts.requests >= budget.max_requests or clock() - started >= budget.max_seconds:
                rejected.extend(
                    Rejected(line, parent, "budget") for line in records[start:stop] if line.strip()
                )
                continue
            try:
                counts.add(send(header + chunk, dedup.sub_batch_token(token, start, stop)))
                continue
            except ServerError as exc:
                if not is_row_error(exc):
                    raise
                counts.requests += 1
                error = exc
        if stop - start == 1:
            rejected.append(Rejected(chunk, error))
            continue
        mid = (start + stop) // 2
        stack.append((mid, stop, None, error))
        stack.append((start, mid, None, error))
    return counts.result(tuple(rejected))


#: Rounds of adding columns for one request: another daemon may add a column with
#: another name in between, which the next round sees.
EVOLVE_ROUNDS = 3


def _evolving(send: Send, evolve: Callable[[bytes], int]) -> Send:
    """``send``, but a request refused for an unknown field is sent again once
    ``evolve`` added the columns it lacks (none added: the refusal stands, and the
    bisection isolates the records that carry the field)."""

    def sender(data: bytes | memoryview, token: str) -> tuple[int, int] | None:
        for _ in range(EVOLVE_ROUNDS):
            try:
                return send(data, token)
            except ServerError as exc:
                if not is_unknown_field(exc) or not evolve(_as_bytes(data)):
                    raise
        return send(data, token)

    return sender


def _by_partition(
    send: Send, partitions: Partitions, line_format: LineFormat, learning: Learning
) -> Send:
    """``send``, but a request refused for too many partitions is sent again in groups
    of at most ``max_partitions_per_insert_block`` partitions, each with its own token;
    and once a table refused one (``learning``), its requests are grouped before they
    are sent, the same way (:mod:`chworkers.clickhouse.presplit`)."""

    def grouped(data: bytes) -> tuple[bytes, list[list[bytes]]] | None:
        keys, limit = partitions(data)  # a row error here is the batch's: bisected
        records = split_records(data, quoted_newlines=line_format.quoted_newlines)
        header = b""
        if line_format.header and records:
            header, records = records[0], records[1:]
        records = [r for r in records if r.strip()]
        if len(keys) != len(records) or limit < 1:
            return None
        return header, group_by_partition(records, keys, limit)

    def each(header: bytes, groups: list[list[bytes]], token: str) -> tuple[int, int] | None:
        counts = _Counts()
        for index, group in enumerate(groups):
            counts.add(send(header + b"".join(group), dedup.partition_token(token, index)))
        return None if counts.rows is None or counts.bytes is None else (counts.rows, counts.bytes)

    def sender(data: bytes | memoryview, token: str) -> tuple[int, int] | None:
        tables, key = learning.tables, learning.key
        evaluated = False
        if key and tables.spans(key):
            try:
                split = grouped(_as_bytes(data))
                evaluated = True
            except ServerError:
                # Refused (a bad row, a field the table lacks yet): sent as it is, as
                # without the table learnt, so the insert's own error decides (a column
                # added, rows bisected); refused for too many partitions, it is
                # evaluated again below.
                split = None
            if split is not None and len(split[1]) > 1:
                tables.spanned(key)
                learning.counted("presplit")
                return each(*split, token)
            if evaluated:
                tables.fitted(key)  # one group: sent as it is, with its own token
        try:
            return send(data, token)
        except ServerError as exc:
            if not is_too_many_partitions(exc):
                raise
            refused = exc
        if key:
            tables.spanned(key)
        split = None if evaluated else grouped(_as_bytes(data))
        if split is None or len(split[1]) < 2:
            raise refused  # it would be refused again as it is
        learning.counted("refused")
        return each(*split, token)

    return sender


@dataclasses.dataclass
class _Counts:
    rows: int | None = 0
    bytes: int | None = 0
    requests: int = 0

    def add(self, written: tuple[int, int] | None) -> None:
        self.requests += 1
        if written is None:
            self.rows = self.bytes = None
        elif self.rows is not None and self.bytes is not None:
            self.rows += written[0]
            self.bytes += written[1]

    def result(self, rejected: tuple[Rejected, ...]) -> InsertResult:
        return InsertResult(self.rows, self.bytes, self.requests, rejected)


def _as_bytes(data: bytes | memoryview) -> bytes:
    """``data`` as bytes (a view copied), to be cut by bytes methods."""
    return data if isinstance(data, bytes) else bytes(data)


def split_records(data: bytes, *, quoted_newlines: bool) -> list[bytes]:
    """Cut ``data`` into records as :class:`~chworkers.daemon.framing.Framer` does: at ``\\n``
    only (a bare ``\\r`` is data), and for CSV not inside a quoted field."""
    lines = data.split(b"\n")
    last = lines.pop()
    out = [line + b"\n" for line in lines]
    if last:
        out.append(last)
    if not quoted_newlines:
        return out
    joined: list[bytes] = []
    pending = b""
    for line in out:
        pending += line
        if pending.count(b'"') % 2 == 0:
            joined.append(pending)
            pending = b""
    if pending:
        joined.append(pending)
    return joined
