"""Answering a query that is not an INSERT with data: one result document per query.

A SELECT in a format that streams (see :mod:`chworkers.embedded.formats`) goes out as
chDB produces its blocks, joined into one document, in bounded memory. Any other format
(JSON, Parquet, Pretty, ...) and any other statement is run by chDB as a whole and sent
from chDB's own buffer in 1 MiB pieces. As in ClickHouse, the first ``buffer_size``
bytes (at least 1 MiB) of a streamed result are held before the response starts, so an
error in them still gets a proper HTTP status; with ``wait_end_of_query=1`` all of it is
(to a temporary file beyond ``buffer_size``). An error after the first bytes went out
is written in ClickHouse's tagged ``__exception__`` block, so clients raise instead of
returning a cut result.
"""

from __future__ import annotations

import logging
import re
import secrets
import tempfile
from collections.abc import Generator
from typing import Any

from chworkers.embedded import formats, queries, sql, streaming, summary
from chworkers.embedded.codecs import Encoder, choose_encoding, encoder_for
from chworkers.embedded.exceptions import (
    BAD_ARGUMENTS,
    SYNTAX_ERROR,
    clickhouse_error,
    exception_block,
    response_body,
)
from chworkers.embedded.protocol import READ_CHUNK, Request, Response
from chworkers.embedded.request import QueryRequest
from chworkers.embedded.sessions import Session
from chworkers.errors import ServerError

log = logging.getLogger(__name__)

#: ClickHouse's DBMS_DEFAULT_BUFFER_SIZE: the least of a result it holds before sending.
DEFAULT_BUFFER_SIZE = 1 << 20
_STREAMABLE = frozenset({"SELECT", "WITH"})
#: Settings under which chDB's per-block documents are more than their rows: extremes
#: come as extra blocks, two wrap every block's document in a prefix and a suffix ([...]
#: for JSONEachRow, the custom result delimiters for CustomSeparated), Arrow
#: dictionaries for LowCardinality are written across blocks as one writer's state, and
#: binary-encoded types make RowBinaryWithNamesAndTypes' header one the joiner cannot
#: find.
_WRAPPING = (
    "extremes",
    "output_format_json_array_of_rows",
    "format_custom_result_before_delimiter",
    "format_custom_result_after_delimiter",
    "output_format_arrow_low_cardinality_as_dictionary",
    "output_format_binary_encode_types_in_binary_format",
)
#: The same in the query text, and WITH TOTALS (whose block chDB's streaming writes out
#: of place, or fails on for ArrowStream).
_WRAPPING_TEXT = re.compile(
    rb"(?i)\b(?:totals|" + b"|".join(w.encode() for w in _WRAPPING) + rb")\b"
)


def content_type(fmt: str) -> str:
    """The Content-Type ClickHouse's output format reports (``getContentType()``)."""
    f = fmt.lower()
    if f.startswith(("tabseparated", "tsv")) or f == "raw":
        return "text/tab-separated-values; charset=UTF-8"
    if f.startswith("csv"):
        header = "present" if "withnames" in f else "absent"
        return f"text/csv; charset=UTF-8; header={header}"
    if f.startswith("json"):
        return "application/json; charset=UTF-8"
    if f.startswith(("pretty", "vertical", "markdown", "values", "template", "raw")):
        return "text/plain; charset=UTF-8"
    if f == "xml":
        return "application/xml; charset=UTF-8"
    return "application/octet-stream"


class _Writer:
    """Writes a chunked result body through the response's encoder."""

    def __init__(self, resp: Response, encoder: Encoder | None) -> None:
        self.resp = resp
        self.encoder = encoder

    def write(self, data: bytes) -> None:
        self.resp.write_chunk(self.encoder.encode(data) if self.encoder else data)

    def finish(self) -> None:
        if self.encoder:
            self.resp.write_chunk(self.encoder.finish())
        self.resp.end_chunked()


def answer(
    version: str,
    conn: Any,
    req: Request,
    qr: QueryRequest,
    text: bytes,
    resp: Response,
    stats: summary.Stats,
    session: Session | None = None,
) -> None:
    """Run ``text`` (the whole query, as bytes) and write its result to ``resp``.

    ``session`` is the request's session, if it has one (its ``SET`` may be in effect).
    """
    if not text.strip():
        raise clickhouse_error(SYNTAX_ERROR, "Empty query")
    fmt_name = sql.output_format(text) or qr.default_format
    fmt = formats.output_format(fmt_name)
    kind = queries.classify(conn, text)
    if kind.statements > 1:
        raise clickhouse_error(SYNTAX_ERROR, "Syntax error: Multi-statements are not allowed")
    if kind.reads:
        formats.check_protocol_version(fmt_name, qr.client_protocol_version)
    encoding = (
        choose_encoding(req.header("Accept-Encoding")) if qr.enable_http_compression else None
    )
    encoder = encoder_for(encoding, _level(qr)) if encoding else None
    if kind.reads:
        _result_headers(resp, fmt_name)
    else:
        resp.set_header("Content-Type", "text/plain; charset=UTF-8")
    if encoding:
        resp.set_header("Content-Encoding", encoding)
    tag = secrets.token_hex(8)  # 16 alphanumeric characters, as ClickHouse's
    resp.set_header("X-ClickHouse-Exception-Tag", tag)
    blocks: Generator[bytes, None, None] | None = None
    if _streams(session, qr, text, fmt):
        blocks = streaming.stream(conn, text, fmt_name, qr.query_params, stats)
    if blocks is None:
        _whole(conn, qr, text, fmt_name, kind, resp, encoder, stats)
        return
    joiner = formats.Joiner(fmt)
    pieces = _joined(blocks, joiner)
    held = _buffer_size(qr)
    first: list[bytes] = []  # an error within the first `held` bytes gets a proper status
    try:
        if qr.wait_end_of_query:
            _spooled(pieces, resp, encoder, stats, held)
            return
        size = 0
        for piece in pieces:
            first.append(piece)
            size += len(piece)
            if size >= held:
                break
    except ServerError:
        pieces.close()
        if not joiner.mismatched or resp.headers_sent:
            raise
        # Nothing went out yet: chDB's blocks were laid out in a way the joiner does not
        # know (a setting it does not list), so let chDB produce the document whole.
        log.debug("query %s: %s; running it whole", qr.get("query_id"), fmt_name)
        stats.read_rows = stats.read_bytes = stats.result_bytes = 0
        _whole(conn, qr, text, fmt_name, kind, resp, encoder, stats)
        return
    except BaseException:
        pieces.close()
        raise
    resp.set_header("X-ClickHouse-Summary", stats.summary())
    resp.start_chunked()
    writer = _Writer(resp, encoder)
    try:
        writer.write(b"".join(first))
        first.clear()
        for piece in pieces:
            writer.write(piece)
    except ServerError as err:
        message = response_body(err, version)
        log.debug("query %s failed mid-stream: %s", qr.get("query_id"), err)
        writer.write(exception_block(message, tag))
        resp.failed = True
    finally:
        pieces.close()
    writer.finish()


def _streams(
    session: Session | None, qr: QueryRequest, text: bytes, fmt: formats.OutputFormat
) -> bool:
    """Whether the result can be joined from chDB's per-block documents.

    Not when totals, extremes or a setting that wraps each block's document may be in
    effect: from the query text, the URL, or (in a session) an earlier SET.
    """
    if not fmt.streams or sql.first_keyword(text) not in _STREAMABLE:
        return False
    if _WRAPPING_TEXT.search(text) or any(name in qr.settings for name in _WRAPPING):
        return False
    if session is not None:
        values = session.own_settings(_WRAPPING).values()
        return all(value in ("", "0", "false") for value in values)
    return True


def _joined(
    blocks: Generator[bytes, None, None], joiner: formats.Joiner
) -> Generator[bytes, None, None]:
    """chDB's per-block documents as the pieces of one document; closing cancels."""
    try:
        for block in blocks:
            piece = joiner.feed(block)
            if piece:
                yield piece
        tail = joiner.finish()
        if tail:
            yield tail
    finally:
        blocks.close()


def _spooled(
    pieces: Generator[bytes, None, None],
    resp: Response,
    encoder: Encoder | None,
    stats: summary.Stats,
    in_memory: int,
) -> None:
    with tempfile.SpooledTemporaryFile(max_size=in_memory) as spool:
        try:
            for piece in pieces:  # a failure here still gets a proper status
                spool.write(piece)
        finally:
            pieces.close()
        spool.seek(0)
        resp.set_header("X-ClickHouse-Summary", stats.summary())
        resp.start_chunked()
        writer = _Writer(resp, encoder)
        while piece := spool.read(READ_CHUNK):
            writer.write(piece)
        writer.finish()


def _whole(
    conn: Any,
    qr: QueryRequest,
    text: bytes,
    fmt_name: str,
    kind: queries.Kind,
    resp: Response,
    encoder: Encoder | None,
    stats: summary.Stats,
) -> None:
    """Run the statement as one chDB query and send chDB's buffer without copying it."""
    res = queries.run(conn, text, fmt_name, qr.query_params)
    stats.add_result(res)
    view = res.get_memview().view()  # chDB's buffer, alive as long as res
    size = len(view)
    stats.result_bytes = size
    if size and not kind.reads:  # e.g. KILL QUERY, which reports what it killed
        _result_headers(resp, fmt_name)
    resp.set_header("X-ClickHouse-Summary", stats.summary())
    if size <= READ_CHUNK:
        data = bytes(view)
        if encoder:
            data = encoder.encode(data) + encoder.finish()
        resp.send_whole(data)
        return
    resp.start_chunked()
    writer = _Writer(resp, encoder)
    for start in range(0, size, READ_CHUNK):
        writer.write(bytes(view[start : start + READ_CHUNK]))
    writer.finish()


def _buffer_size(qr: QueryRequest) -> int:
    """How much of a streamed result is held before the response starts.

    ClickHouse's ``buffer_size`` URL parameter (HTTP interface, "Response buffering"):
    at least its 1 MiB default; with ``wait_end_of_query=1`` what does not fit goes to a
    temporary file.
    """
    value = qr.get("buffer_size") or str(DEFAULT_BUFFER_SIZE)
    try:
        return max(int(value), DEFAULT_BUFFER_SIZE)
    except ValueError:
        raise clickhouse_error(
            BAD_ARGUMENTS, f"Invalid buffer_size '{value}': expected a number of bytes"
        ) from None


def _result_headers(resp: Response, fmt: str) -> None:
    """Only a statement with a result set gets X-ClickHouse-Format, as in ClickHouse.

    clickhouse-connect's ``command()`` reads the body as a value when the header is
    there and returns a QuerySummary (with the query id) when it is not.
    """
    resp.set_header("X-ClickHouse-Format", fmt)
    resp.set_header("Content-Type", content_type(fmt))


def _level(qr: QueryRequest) -> int:
    try:
        return max(1, min(int(qr.settings.get("http_zlib_compression_level", "3")), 9))
    except ValueError:
        return 3
