"""Running one query: its connection or session, routing an INSERT's data into chDB.

An ``INSERT ... FORMAT X`` (or ``VALUES``) streams the request body straight into a
chDB streaming insert, so a body of any size passes through bounded memory, and a
failure anywhere (bad data, broken compression, a truncated body) cancels the whole
insert. Every other statement is answered by :mod:`chworkers.embedded.results`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from chworkers.embedded import (
    asyncddl,
    asyncinsert,
    crossdedup,
    engine,
    formats,
    infile,
    pool,
    progress,
    queries,
    request,
    results,
    sql,
    streaming,
    summary,
    tablerisk,
)
from chworkers.embedded.asyncdedup import AsyncDedup
from chworkers.embedded.asynclog import AsyncInsertLog
from chworkers.embedded.asyncqueue import AsyncInsertQueue
from chworkers.embedded.codecs import decoder_for
from chworkers.embedded.exceptions import (
    QUERY_IS_TOO_LARGE,
    QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING,
    clickhouse_error,
)
from chworkers.embedded.pool import ConnectionPool, PooledConnection
from chworkers.embedded.protocol import READ_CHUNK, Request, Response
from chworkers.embedded.request import QueryRequest
from chworkers.embedded.sessions import Session, Sessions, parse_timeout
from chworkers.embedded.stats import EndpointStats
from chworkers.errors import ServerError

log = logging.getLogger(__name__)

#: Largest query text (the statement, not an INSERT's data) the endpoint reads.
MAX_QUERY_SIZE = 256 << 20
#: Insert data up to this size is read whole and inserted by one query; a body larger
#: than this (announced, or seen) streams, read by a thread of its own.
PREFETCH_ABOVE = 1 << 20


@dataclass
class Context:
    """What every request needs from the endpoint."""

    engine: engine.Engine
    sessions: Sessions
    pool: ConnectionPool
    display_name: str
    stats: EndpointStats = field(default_factory=EndpointStats)
    running: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The asynchronous insert queue (None: every insert is written at once).
    inserts: AsyncInsertQueue | None = None
    #: Its entries' block ids, per table (DDL resets or lets go of a table's).
    dedup: AsyncDedup | None = None
    #: ``system.asynchronous_insert_log``'s rows waiting (written at SYSTEM FLUSH LOGS).
    insert_log: AsyncInsertLog | None = None

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
def _connection(ctx: Context, qr: QueryRequest) -> Iterator[Session | PooledConnection]:
    """The request's session, or a connection of its own (from the pool) set up for it.

    A pooled connection goes back to the pool only if the request marked it reusable.
    """
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
                        queries.run(
                            session.conn,
                            f"DROP TEMPORARY TABLE IF EXISTS {queries.quote_ident(table.name)}",
                        )
                    except ServerError:
                        log.debug("dropping external table %s failed", table.name)
        return
    pooled = ctx.pool.take()
    try:
        settings = qr.settings
        if qr.method == "GET" and "readonly" not in settings:
            settings = {**settings, "readonly": "2"}  # as ClickHouse: GET never writes
        pooled.prepare(qr.database, settings)
        yield pooled
    finally:
        ctx.pool.give_back(pooled)


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
    stats = summary.Stats(started=time.monotonic())
    query_id = qr.get("query_id") or str(uuid.uuid4())
    resp.set_header("X-ClickHouse-Query-Id", query_id)
    resp.set_header("X-ClickHouse-Timezone", ctx.engine.timezone)
    resp.set_header("X-ClickHouse-Server-Display-Name", ctx.display_name)
    chunks: Iterator[bytes] = _body_chunks(req) if qr.body_continues_query else iter(())
    with ctx.query_id(query_id), _connection(ctx, qr) as handle:
        session = handle if isinstance(handle, Session) else None
        conn = handle.conn
        for table in qr.external:
            queries.run(
                conn,
                f"CREATE TEMPORARY TABLE {queries.quote_ident(table.name)} ({table.structure}) "
                "ENGINE = Memory",
            )
            streaming.insert(  # a Memory table of our own: nothing to swallow, no check
                conn,
                f"INSERT INTO {queries.quote_ident(table.name)}",
                table.fmt,
                [table.data],
                stats,
                check=False,
            )
            stats.written_rows = stats.written_bytes = 0
        compressed = _lz4_insert(conn, req, qr)
        if compressed is not None and (
            _queued(ctx, handle, qr, compressed)
            or crossdedup.duplicate(ctx.dedup, handle, qr, compressed)
        ):
            compressed = None  # decoded here, then queued (or dropped)
        if compressed is not None:
            formats.check_protocol_version(compressed.fmt, qr.client_protocol_version)
            statement, fmt = compressed.statement, compressed.fmt
            try:
                done = infile.insert_lz4(conn, statement, fmt, _raw_chunks(req), stats)
            except ServerError as err:  # a 200 already, if progress headers went out
                if not progress.headers_went_out(qr, stats.started):
                    raise
                progress.answer_failure(ctx.engine.version, resp, err, stats)
                return
            if done:
                _inserted(ctx, handle, qr, resp, stats)
                return
        head, insert, chunks = request.statement_head(qr.query_prefix, chunks)
        if insert is not None:
            formats.check_protocol_version(insert.fmt, qr.client_protocol_version)
        first = head[insert.data_offset :] if insert is not None else b""
        if ctx.inserts is not None and insert is not None and _queued(ctx, handle, qr, insert):
            rest = asyncinsert.push(ctx.inserts, handle, qr, insert, first, chunks, stats, query_id)
            if rest is None:
                _inserted(ctx, handle, qr, resp, stats)
                return
            first, chunks = b"", rest  # too much data: written synchronously
        if insert is not None and crossdedup.duplicate(ctx.dedup, handle, qr, insert):
            crossdedup.drop(conn, insert, first, chunks, stats)
            _inserted(ctx, handle, qr, resp, stats)
            return
        if insert is not None and _streams(insert, head, qr):
            try:
                _insert(conn, req, insert, first, chunks, stats)
            except ServerError as err:  # a 200 already, if progress headers went out
                if not progress.headers_went_out(qr, stats.started):
                    raise
                progress.answer_failure(ctx.engine.version, resp, err, stats)
                return
            _inserted(ctx, handle, qr, resp, stats)
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
        if ctx.inserts is not None:
            flushed = asyncinsert.flush_targets(text)
            if flushed is not None:
                database = qr.database or queries.current_database(conn)
                asyncinsert.flush(ctx.inserts, database, flushed)
                _inserted(ctx, handle, qr, resp, stats)
                return
            text = asyncinsert.with_queue_table(ctx.inserts, text)
        if ctx.insert_log is not None and asyncinsert.flushes_logs(text):
            ctx.insert_log.flush()  # then chDB flushes its own
        # DDL: a table, view or constraint may be new. Forgotten after it too, so an
        # insert that asked while it ran does not keep what it saw before.
        ddl = sql.first_keyword(text) not in _CHANGES_NO_TABLE
        if ddl:
            tablerisk.risks.forget()
        ran = True
        try:
            results.answer(ctx.engine.version, conn, req, qr, text, resp, stats, session)
            if ddl and ctx.dedup is not None:
                asyncddl.after_ddl(ctx.dedup, conn, qr.database, text)
            if insert is not None:
                ctx.stats.inserted(stats.written_rows, stats.written_bytes)
            pool.done_with(handle, qr, text, resp)
        except ServerError:
            ran = False  # chDB refused the statement: the session is as it was
            raise
        finally:
            if ddl:
                tablerisk.risks.forget()
            if session is not None and ran:  # even if the client is gone by now
                session.statement_ran(text)


#: Statements that create, drop or alter no table, view or constraint.
_CHANGES_NO_TABLE = frozenset(
    ["SELECT", "WITH", "INSERT", "DESCRIBE", "DESC", "SHOW", "EXISTS", "EXPLAIN", "CHECK"]
)


def _insert(
    conn: Any,
    req: Request,
    insert: sql.InsertHead,
    first: bytes,
    chunks: Iterator[bytes],
    stats: summary.Stats,
) -> None:
    """Insert the data after an INSERT's head: ``first``, then the rest of the body.

    Data that ends within the first MiB is read whole; into a table whose streaming
    insert would need the ``system.errors`` check it is inserted by one query instead
    (:mod:`chworkers.embedded.infile`), which raises those errors itself. A larger body
    streams into chDB while the rest is read by a thread of its own.
    """
    whole = False
    data = bytearray(first)
    if req.body.length is None or req.body.length <= PREFETCH_ABOVE:
        while len(data) <= PREFETCH_ABOVE:
            nxt = next(chunks, None)
            if nxt is None:
                whole = True
                break
            data += nxt
    check = tablerisk.risks.needs_check(conn, insert.statement)
    if whole and check and infile.insert(conn, insert.statement, insert.fmt, bytes(data), stats):
        return
    rest: Iterator[bytes] = chain([bytes(data)], chunks)
    if not whole:  # read the body while chDB parses
        rest = streaming.prefetch(rest)
    try:
        streaming.insert(conn, insert.statement, insert.fmt, rest, stats, check=check)
    finally:
        if isinstance(rest, Generator):
            rest.close()  # the reader has stopped before anyone drains the body


def _inserted(
    ctx: Context,
    handle: Session | PooledConnection,
    qr: QueryRequest,
    resp: Response,
    stats: summary.Stats,
) -> None:
    """Answer an INSERT whose data went in."""
    ctx.stats.inserted(stats.written_rows, stats.written_bytes)
    resp.set_header("X-ClickHouse-Summary", stats.summary())
    resp.set_header("Content-Type", "text/plain; charset=UTF-8")
    resp.send_whole(b"")
    pool.done_with(handle, qr, b"INSERT", resp)


def _queued(
    ctx: Context, handle: Session | PooledConnection, qr: QueryRequest, insert: sql.InsertHead
) -> bool:
    return ctx.inserts is not None and asyncinsert.wanted(handle, qr, insert)


def _lz4_insert(conn: Any, req: Request, qr: QueryRequest) -> sql.InsertHead | None:
    """The INSERT's head if its lz4 body is best handed to chDB still compressed.

    chDB decompresses lz4 for a fraction of what python-lz4 costs
    (:func:`chworkers.embedded.infile.insert_lz4`). Taken when the URL holds the whole
    statement, so the body is all data, and the data would go ``FROM INFILE`` anyway
    (a table that needs the check) or is large (announced above a MiB); a small body
    into a table without the check is cheaper through the streaming insert.
    """
    if not qr.body_continues_query or not qr.query_prefix:
        return None
    if (req.header("Content-Encoding") or "").strip().lower() != "lz4":
        return None
    try:
        head = sql.parse_insert(qr.query_prefix, complete=True)
    except sql.NeedMoreInput:  # pragma: no cover - complete=True never asks for more
        return None
    if head is None or head.data_offset != len(qr.query_prefix) or head.fmt.lower() == "values":
        return None
    if not _streams(head, qr.query_prefix, qr):
        return None
    large = req.body.length is not None and req.body.length > PREFETCH_ABOVE
    return head if large or tablerisk.risks.needs_check(conn, head.statement) else None


def _raw_chunks(req: Request) -> Iterator[bytes]:
    """The request body as it arrives (still compressed)."""
    while True:
        raw = req.body.read(READ_CHUNK)
        if not raw:
            return
        yield raw


def _streams(insert: sql.InsertHead, head: bytes, qr: QueryRequest) -> bool:
    """Whether an INSERT's data can go through chDB's streaming insert.

    That takes no query parameters: an ``INSERT ... VALUES`` (whose rows may hold
    ``{name:Type}``) or a statement with a placeholder, sent with ``param_*``, is run as
    one query instead (its text limited to MAX_QUERY_SIZE), as ClickHouse substitutes them.
    """
    if not qr.query_params:
        return True
    return insert.fmt.lower() != "values" and b"{" not in head[: insert.data_offset]
