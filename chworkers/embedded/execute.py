"""Running one query: routing an INSERT's data into chDB, streaming results out.

An ``INSERT ... FORMAT X`` (or ``VALUES``) streams the request body straight into a
chDB streaming insert, so a body of any size passes through bounded memory, and a
failure anywhere (bad data, broken compression, a truncated body) cancels the whole
insert. A SELECT streams chDB's blocks out as they come; with ``wait_end_of_query=1``
the result is first spooled (to disk beyond 32 MiB) so an error still gets a proper
HTTP status. An error after the first bytes went out is written in ClickHouse's
tagged ``__exception__`` block, so clients raise instead of returning a cut result.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from chworkers.embedded import engine, sql
from chworkers.embedded.codecs import Encoder, choose_encoding, decoder_for, encoder_for
from chworkers.embedded.exceptions import (
    QUERY_IS_TOO_LARGE,
    QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING,
    SYNTAX_ERROR,
    clickhouse_error,
    response_body,
)
from chworkers.embedded.protocol import READ_CHUNK, Request, Response
from chworkers.embedded.request import QueryRequest
from chworkers.embedded.sessions import Session, Sessions, parse_timeout
from chworkers.embedded.stats import EndpointStats
from chworkers.errors import ServerError

log = logging.getLogger(__name__)

#: Largest query text (the statement, not an INSERT's data) the endpoint reads.
MAX_QUERY_SIZE = 256 << 20
#: Longest INSERT statement head before its data.
MAX_INSERT_HEAD = 1 << 20
#: Insert bodies larger than this (or chunked) are read by a thread of their own.
PREFETCH_ABOVE = 1 << 20
#: Results up to this size are spooled in memory with wait_end_of_query=1, then disk.
SPOOL_IN_MEMORY = 32 << 20
_STREAMABLE = frozenset({"SELECT", "WITH"})


@dataclass
class Context:
    """What every request needs from the endpoint."""

    engine: engine.Engine
    sessions: Sessions
    display_name: str
    stats: EndpointStats = field(default_factory=EndpointStats)
    running: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def query_id(self, query_id: str) -> Iterator[None]:
        """Refuse a query whose id is already running, as ClickHouse does."""
        with self.lock:
            if query_id in self.running:
                raise clickhouse_error(
                    QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING,
                    f"Query with id = {query_id} is already running",
                )
            self.running.add(query_id)
        try:
            yield
        finally:
            with self.lock:
                self.running.discard(query_id)


def content_type(fmt: str) -> str:
    f = fmt.lower()
    if f.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if f.startswith("csv"):
        return "text/csv; charset=UTF-8; header=absent"
    if f.startswith("json"):
        return "application/json; charset=UTF-8"
    if f.startswith(("pretty", "vertical", "markdown", "values", "template", "raw")):
        return "text/plain; charset=UTF-8"
    if f == "xml":
        return "application/xml; charset=UTF-8"
    return "application/octet-stream"


def _body_chunks(req: Request) -> Iterator[bytes]:
    decoder = decoder_for(req.header("Content-Encoding"))
    while True:
        raw = req.body.read(READ_CHUNK)
        if not raw:
            break
        out = decoder.decode(raw)
        if out:
            yield out
    decoder.finish()


@contextmanager
def _connection(ctx: Context, qr: QueryRequest) -> Iterator[Session | Any]:
    """The request's session, or a fresh chDB connection set up for it."""
    if qr.session_id:
        timeout = parse_timeout(qr.get("session_timeout"))
        check = qr.get("session_check", "0") not in ("0", "")
        with ctx.sessions.use(qr.session_id, timeout, check) as session:
            session.prepare(qr.database, qr.settings)
            try:
                yield session
            finally:
                for table in qr.external:  # external data lives for one query
                    try:
                        engine.run(
                            session.conn,
                            f"DROP TEMPORARY TABLE IF EXISTS {engine.quote_ident(table.name)}",
                        )
                    except ServerError:
                        log.debug("dropping external table %s failed", table.name)
        return
    conn = ctx.engine.connect()
    try:
        if qr.database:
            engine.run(conn, f"USE {engine.quote_ident(qr.database)}")
        engine.apply_settings(conn, qr.settings)
        if qr.method == "GET" and "readonly" not in qr.settings:
            engine.run(conn, "SET readonly = 2")  # as ClickHouse: GET never writes
        yield conn
    finally:
        engine.close_quietly(conn)


def execute(ctx: Context, req: Request, qr: QueryRequest, resp: Response) -> None:
    """Run the request's query and write the response (raises ServerError before it).

    The response's last bytes go out only once the session and query id are free
    again, so the client's next request can never find them still taken.
    """
    resp.hold_final()
    try:
        _execute(ctx, req, qr, resp)
    except BaseException:
        resp.release_final()
        raise
    resp.release_final()


def _execute(ctx: Context, req: Request, qr: QueryRequest, resp: Response) -> None:
    stats = engine.Stats(started=time.monotonic())
    query_id = qr.get("query_id") or str(uuid.uuid4())
    resp.set_header("X-ClickHouse-Query-Id", query_id)
    resp.set_header("X-ClickHouse-Timezone", ctx.engine.timezone)
    resp.set_header("X-ClickHouse-Server-Display-Name", ctx.display_name)
    chunks: Iterator[bytes] = _body_chunks(req) if qr.body_continues_query else iter(())
    with ctx.query_id(query_id), _connection(ctx, qr) as handle:
        session = handle if isinstance(handle, Session) else None
        conn = session.conn if session is not None else handle
        for table in qr.external:
            engine.run(
                conn,
                f"CREATE TEMPORARY TABLE {engine.quote_ident(table.name)} ({table.structure}) "
                "ENGINE = Memory",
            )
            engine.insert(
                conn,
                f"INSERT INTO {engine.quote_ident(table.name)}",
                table.fmt,
                [table.data],
                stats,
            )
            stats.written_rows = stats.written_bytes = 0
        head, insert, chunks = _statement_head(qr.query_prefix, chunks)
        if insert is not None:
            data: Iterator[bytes] = chain([head[insert.data_offset :]], chunks)
            if req.body.length is None or req.body.length > PREFETCH_ABOVE:
                data = engine.prefetch(data)  # read the body while chDB parses
            try:
                engine.insert(conn, insert.statement, insert.fmt, data, stats)
            finally:
                if isinstance(data, Generator):
                    data.close()  # the reader has stopped before anyone drains the body
            ctx.stats.inserted(stats.written_rows, stats.written_bytes)
            resp.set_header("X-ClickHouse-Summary", stats.summary())
            resp.set_header("Content-Type", "text/plain; charset=UTF-8")
            resp.send_whole(b"")
            return
        buf = bytearray(head)
        for chunk in chunks:
            buf += chunk
            if len(buf) > MAX_QUERY_SIZE:
                raise clickhouse_error(
                    QUERY_IS_TOO_LARGE,
                    f"The query is longer than {MAX_QUERY_SIZE} bytes; send data for an "
                    "INSERT after its FORMAT clause so it streams",
                )
        text = bytes(buf)
        try:
            _select(ctx, conn, req, qr, text, resp, stats)
        finally:
            if session is not None:
                session.statement_ran(sql.first_keyword(text))


def _statement_head(
    prefix: bytes, chunks: Iterator[bytes]
) -> tuple[bytes, sql.InsertHead | None, Iterator[bytes]]:
    """Read until an INSERT's data start is known.

    Returns the bytes read so far (statement and maybe some data), the INSERT's head
    (None if the text is no INSERT with inline data) and the rest of the body.
    """
    buf = bytearray(prefix)
    done = False

    def more() -> bool:
        nonlocal done
        nxt = next(chunks, None)
        if nxt is None:
            done = True
            return False
        buf.extend(nxt)
        return True

    while True:  # is it an INSERT at all? (comments may come first)
        try:
            if sql.first_keyword(bytes(buf), complete=done) != "INSERT":
                return bytes(buf), None, chunks
            break
        except sql.NeedMoreInput:
            if len(buf) > MAX_INSERT_HEAD:
                return bytes(buf), None, chunks  # the engine will say what is wrong
            more()
    while True:
        try:
            head = sql.parse_insert(bytes(buf), complete=done)
        except sql.NeedMoreInput:
            if len(buf) > MAX_INSERT_HEAD and not done:
                raise clickhouse_error(
                    QUERY_IS_TOO_LARGE,
                    f"No FORMAT or VALUES clause within the first {MAX_INSERT_HEAD} bytes "
                    "of the INSERT statement",
                ) from None
            more()
            continue
        return bytes(buf), head, chunks


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


def _select(
    ctx: Context,
    conn: Any,
    req: Request,
    qr: QueryRequest,
    text: bytes,
    resp: Response,
    stats: engine.Stats,
) -> None:
    if not text.strip():
        raise clickhouse_error(SYNTAX_ERROR, "Empty query")
    fmt = sql.output_format(text) or qr.default_format
    query = text.decode("utf-8", "replace")
    kind = engine.classify(conn, query)
    if kind.statements > 1:
        raise clickhouse_error(SYNTAX_ERROR, "Syntax error: Multi-statements are not allowed")
    encoding = (
        choose_encoding(req.header("Accept-Encoding")) if qr.enable_http_compression else None
    )
    encoder = encoder_for(encoding, _level(qr)) if encoding else None
    if kind.reads:
        _result_headers(resp, fmt)
    else:
        resp.set_header("Content-Type", "text/plain; charset=UTF-8")
    if encoding:
        resp.set_header("Content-Encoding", encoding)
    tag = secrets.token_hex(8)  # 16 alphanumeric characters, as ClickHouse's
    resp.set_header("X-ClickHouse-Exception-Tag", tag)
    blocks: Generator[bytes, None, None] | None = None
    if sql.first_keyword(text) in _STREAMABLE:
        blocks = engine.stream(conn, query, fmt, qr.query_params, stats)
    if blocks is None:
        res = engine.run(conn, query, fmt, qr.query_params)
        stats.add_result(res)
        data = res.bytes()
        stats.result_bytes = len(data)
        if data and not kind.reads:  # e.g. KILL QUERY, which reports what it killed
            _result_headers(resp, fmt)
        resp.set_header("X-ClickHouse-Summary", stats.summary())
        if encoder:
            data = encoder.encode(data) + encoder.finish()
        resp.send_whole(data)
        return
    if qr.wait_end_of_query:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            for block in blocks:  # a failure here still gets a proper status
                spool.write(block)
            spool.seek(0)
            resp.set_header("X-ClickHouse-Summary", stats.summary())
            resp.start_chunked()
            writer = _Writer(resp, encoder)
            while piece := spool.read(READ_CHUNK):
                writer.write(piece)
            writer.finish()
        return
    first = next(blocks, b"")  # errors before the first block get a proper status
    resp.set_header("X-ClickHouse-Summary", stats.summary())
    resp.start_chunked()
    writer = _Writer(resp, encoder)
    try:
        writer.write(first)
        for block in blocks:
            writer.write(block)
    except ServerError as err:
        message = response_body(err, ctx.engine.version)
        log.debug("query %s failed mid-stream: %s", qr.get("query_id"), err)
        block = (
            b"__exception__\r\n"
            + tag.encode()
            + b"\r\n"
            + message
            + f"{len(message)} {tag}\r\n__exception__\r\n".encode()
        )
        writer.write(block)
        resp.failed = True
    finally:
        blocks.close()
    writer.finish()


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
