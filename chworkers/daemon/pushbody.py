"""What a push request's body must be, and how it becomes records.

The push endpoint (:mod:`chworkers.daemon.ingest`) takes bodies in JSONEachRow (one
JSON object per line), CSV or TSV, chosen by the ``format`` query parameter or the
Content-Type (:func:`body_format`), maybe gzip- or deflate-compressed
(:func:`decode`, limited after decompression as before it). :func:`frame` cuts a body
into whole records and checks JSON lines; :func:`check_declared_format` refuses JSON
declared as CSV or TSV before ClickHouse would reject it row by row. Every refusal is an
:class:`~chworkers.errors.HttpRequestError` with the status to answer and the reason
(which line, what is wrong). An ``Idempotency-Key`` becomes the request's deduplication
token (:func:`idempotency_token`).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from http import HTTPStatus

from chworkers.clickhouse.dedup import request_token
from chworkers.daemon.framing import FORMATS, Framer, RecordTooLargeError
from chworkers.http.framing import http_error

__all__ = [
    "CONTENT_TYPES",
    "MAX_IDEMPOTENCY_KEY",
    "body_format",
    "check_declared_format",
    "check_json_lines",
    "decode",
    "frame",
    "idempotency_token",
]

#: Longest ``Idempotency-Key`` accepted (characters).
MAX_IDEMPOTENCY_KEY = 256

CONTENT_TYPES = {
    "application/json": "JSONEachRow",
    "application/x-ndjson": "JSONEachRow",
    "application/jsonl": "JSONEachRow",
    "text/csv": "CSV",
    "text/tab-separated-values": "TSV",
}


def body_format(configured: str, query: Mapping[str, list[str]], content_type: str) -> str:
    """The body's format: ``?format=``, else the Content-Type's, else the pipeline's."""
    if "format" in query:
        fmt = query["format"][-1]
    else:
        fmt = CONTENT_TYPES.get(content_type.split(";")[0].strip().lower(), configured)
    if fmt not in FORMATS:
        raise http_error(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"format {fmt!r} is not accepted; use one of {', '.join(FORMATS)}",
        )
    return fmt


def decode(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """The body inflated (``Content-Encoding`` gzip or deflate), at most ``max_bytes``."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise http_error(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Encoding {encoding!r} is not accepted; use gzip or deflate",
        )
    wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, max_bytes + 1)
        complete = inflater.eof
    except zlib.error as exc:
        raise http_error(HTTPStatus.BAD_REQUEST, f"broken {encoding} body: {exc}") from exc
    if len(out) > max_bytes:
        raise http_error(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the body inflates to more than {max_bytes} bytes",
        )
    if not complete:
        raise http_error(HTTPStatus.BAD_REQUEST, f"truncated {encoding} body")
    return out


def frame(
    body: bytes, fmt: str, *, max_record_bytes: int, validate_json: bool = True
) -> tuple[bytes, int, bytes]:
    """The body's records, their count, and its ``*WithNames`` header (or b"")."""
    framer = Framer(fmt, max_record_bytes=max_record_bytes)
    try:
        head, rows = framer.feed(body)
        tail, more = framer.finish()
    except RecordTooLargeError as exc:
        raise http_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc)) from exc
    records = head + tail
    if fmt == "JSONEachRow" and validate_json:
        check_json_lines(records)
    return records, rows + more, framer.header


def _idempotency_key_ok(key: str) -> bool:
    return 0 < len(key) <= MAX_IDEMPOTENCY_KEY and all(" " <= c <= "~" for c in key)


def idempotency_token(table: str, key: str | None) -> str | None:
    """The deduplication token of a request that carries an ``Idempotency-Key``: such a
    request is a batch of its own, and sent again (its answer lost) it is dropped by
    ClickHouse instead of landing twice."""
    if key is None:
        return None
    key = key.strip()
    if not _idempotency_key_ok(key):
        raise http_error(
            HTTPStatus.BAD_REQUEST,
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
        )
    return request_token(table, key)


_NOT_BLANK = re.compile(rb"\S")


def _first_line(data: bytes) -> bytes:
    """The first line of ``data`` that is not blank, from its first byte that is not."""
    found = _NOT_BLANK.search(data)
    if found is None:
        return b""
    end = data.find(b"\n", found.start())
    return data[found.start() : end if end >= 0 else len(data)]


def check_declared_format(header: bytes, records: bytes, fmt: str, configured: str) -> None:
    """A body whose records are JSON objects but that was declared CSV or TSV would be
    accepted and then rejected by ClickHouse row by row: say so now instead.

    CSV cannot hold a JSON object unquoted (its quotes would be malformed), so a CSV
    declaration is always checked; a TSV line may be a JSON document for a single String
    column, so TSV is checked only when the pipeline itself does not take TSV.
    """
    if fmt == "JSONEachRow" or (fmt.startswith("T") and configured.startswith("T")):
        return
    # Only the first line that is not blank is looked at (never a copy or a split of the
    # whole body); a *WithNames header is checked as well: a JSON object is no list of
    # names either.
    first = _first_line(header) or _first_line(records)
    if not first.startswith(b"{"):
        return
    try:
        value = json.loads(first)
    except ValueError:
        return
    if isinstance(value, dict):
        raise http_error(
            HTTPStatus.BAD_REQUEST,
            f"record 1 is a JSON object, but the body was declared {fmt} (by "
            "Content-Type or ?format=); nothing was kept. Send JSON lines as "
            "Content-Type: application/x-ndjson or with ?format=JSONEachRow",
        )


def check_json_lines(records: bytes) -> None:
    """Every line that is not blank is a JSON object; else 400 naming the first that is not."""
    for number, line in enumerate(records.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise http_error(
                HTTPStatus.BAD_REQUEST, f"line {number}: not valid JSON: {exc}"
            ) from None
        if not isinstance(value, dict):
            raise http_error(
                HTTPStatus.BAD_REQUEST,
                f"line {number}: expected a JSON object, got {type(value).__name__}",
            )
