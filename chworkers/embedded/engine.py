"""chDB, the ClickHouse engine the endpoint hosts.

One process opens the data directory once (the *primary* connection keeps the engine
up for the endpoint's lifetime) and every request then has a connection of its own
(a session's, or one from :mod:`chworkers.embedded.pool`): each connection is its own
ClickHouse session context, so a request's ``SET``, ``USE`` and temporary tables never
leak into another's, and queries on different connections run in parallel (chDB
releases the GIL while it runs a query; it holds it while it opens a connection).
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chworkers.embedded import deduplog
from chworkers.embedded.exceptions import UNKNOWN_SETTING, clickhouse_error, from_chdb
from chworkers.errors import EmbeddedError, ServerError

log = logging.getLogger(__name__)

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _chdb() -> Any:
    from chdb import _chdb as native  # imported late: loading chDB costs ~100 MB

    return native


@dataclass
class Stats:
    """What ClickHouse reports in ``X-ClickHouse-Summary``."""

    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0
    result_rows: int = 0
    result_bytes: int = 0
    started: float = 0.0

    def add_result(self, res: Any) -> None:
        self.read_rows += int(res.rows_read())
        self.read_bytes += int(res.bytes_read())
        self.written_rows += int(res.rows_written())
        self.written_bytes += int(res.bytes_written())

    def summary(self) -> str:
        elapsed_ns = int((time.monotonic() - self.started) * 1e9) if self.started else 0
        result_rows, result_bytes = self.result_rows, self.result_bytes
        if self.written_rows and not result_rows:
            # An INSERT's result is what it wrote (query_log's result_rows, and the
            # summary ClickHouse sends for it).
            result_rows, result_bytes = self.written_rows, self.written_bytes
        values = {
            "read_rows": self.read_rows,
            "read_bytes": self.read_bytes,
            "written_rows": self.written_rows,
            "written_bytes": self.written_bytes,
            "total_rows_to_read": self.read_rows,
            "result_rows": result_rows,
            "result_bytes": result_bytes,
            "elapsed_ns": elapsed_ns,
        }
        # ClickHouse writes every number as a JSON string.
        return json.dumps({k: str(v) for k, v in values.items()}, separators=(",", ":"))


def quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Engine:
    """The chDB engine on one data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        _check_not_locked(path)
        deduplog.repair(path)
        try:
            self._primary = _chdb().connect(str(path))
        except RuntimeError as exc:
            text = str(exc)
            if "Cannot lock file" in text or "Another server instance" in text:
                raise _in_use(path) from None
            raise EmbeddedError(f"chDB could not open {path}: {text}", path=str(path)) from exc
        row = self._primary.query("SELECT version(), timezone()", "TabSeparated").bytes()
        version, timezone = row.decode().rstrip("\n").split("\t")
        self.version: str = version
        self.timezone: str = timezone
        #: Called for every connection opened (the endpoint counts them).
        self.on_connect: Callable[[], None] | None = None

    def connect(self) -> Any:
        """A fresh connection (its own session context)."""
        try:
            conn = _chdb().connect(str(self.path))
        except RuntimeError as exc:
            raise from_chdb(exc) from None
        if self.on_connect is not None:
            self.on_connect()
        return conn

    def close(self) -> None:
        self._primary.close()


def _check_not_locked(path: Path) -> None:
    """Fail clearly if another process holds the data directory.

    ClickHouse flock()s ``<path>/status`` while it runs; chDB would only report a
    generic initialisation error (after printing the real one to stderr itself).
    """
    status = path / "status"
    if not status.exists():
        return
    with open(status, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise _in_use(path) from None
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _in_use(path: Path) -> EmbeddedError:
    return EmbeddedError(
        f"the data directory {path} is in use by another process (an embedded endpoint "
        f"or a chDB program holds its lock file {path / 'status'}); stop that process or "
        "choose another --path",
        path=str(path),
    )


def close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # closing a broken connection must not hide the real error
        log.debug("closing a chDB connection failed", exc_info=True)


def sql_bytes(sql: str | bytes) -> bytes:
    """Query text as chDB takes it: the bytes the client sent, never re-encoded.

    Text that came from a URL is decoded with ``surrogateescape``, so bytes that are not
    UTF-8 (``SELECT hex('\xff')``) go back to chDB as they arrived.
    """
    return sql if isinstance(sql, bytes) else sql.encode("utf-8", "surrogateescape")


def run(
    conn: Any,
    sql: str | bytes,
    fmt: str = "TabSeparated",
    params: Mapping[str, str] | None = None,
) -> Any:
    """Run a statement and return chDB's whole result; raises ServerError."""
    try:
        return conn.query(sql_bytes(sql), fmt, params=dict(params or {}))
    except RuntimeError as exc:
        raise from_chdb(exc) from None


def apply_settings(conn: Any, settings: Mapping[str, str]) -> None:
    """Put ``settings`` in effect on the connection, as ClickHouse applies URL parameters.

    One ``SET a = ..., b = ...`` for all of them: each chDB query costs about 0.2 ms of
    CPU, and clickhouse-connect sends five or six settings with every request.
    ClickHouse checks every name before applying any, so an unknown one changes nothing.
    """
    for name in settings:
        if not _SETTING_NAME.match(name):
            raise clickhouse_error(UNKNOWN_SETTING, f"Unknown setting '{name}'")
    if settings:
        run(conn, "SET " + ", ".join(f"{n} = {quote_literal(v)}" for n, v in settings.items()))


def current_settings(conn: Any, names: Iterable[str]) -> dict[str, str]:
    """The connection's current values of ``names`` (to restore them afterwards).

    Raises UNKNOWN_SETTING for a name ClickHouse does not know.
    """
    wanted = list(names)
    for name in wanted:
        if not _SETTING_NAME.match(name):
            raise clickhouse_error(UNKNOWN_SETTING, f"Unknown setting '{name}'")
    if not wanted:
        return {}
    # getSetting() is ~5x cheaper than a system.settings lookup.
    exprs = ", ".join(f"toString(getSetting({quote_literal(n)}))" for n in wanted)
    res = run(conn, f"SELECT [{exprs}]", "JSONCompactEachRow")
    values = json.loads(res.bytes())[0]
    return {n: str(v) for n, v in zip(wanted, values, strict=True)}


def current_database(conn: Any) -> str:
    return str(run(conn, "SELECT currentDatabase()").bytes().decode().rstrip("\n"))


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


@dataclass(frozen=True)
class Kind:
    """What chDB's parser says about a query before it runs."""

    #: How many statements the text holds (1 if it does not parse: the engine reports it).
    statements: int
    #: A SELECT, SHOW, DESCRIBE, EXISTS, EXPLAIN, CHECK ...: a statement with a result set.
    reads: bool


def classify(conn: Any, sql: str | bytes) -> Kind:
    """How many statements ``sql`` holds and whether it is one that returns rows."""
    try:
        info = conn.classify_query(sql_bytes(sql))
        count = int(info["statement_count"])
        reads = int(info["query_class"]) == 0  # chdb query_class.READ_ONLY
    except (RuntimeError, KeyError, TypeError, ValueError):
        return Kind(1, False)
    return Kind(count or 1, reads)


def stream(
    conn: Any, sql: str | bytes, fmt: str, params: Mapping[str, str], stats: Stats
) -> Generator[bytes, None, None] | None:
    """Start a streaming SELECT; None if chDB cannot stream this statement.

    The iterator yields each block's bytes in ``fmt`` and raises ServerError on a
    failure in the middle; closing it early cancels the query.
    """
    try:
        handle = conn.send_query(sql_bytes(sql), fmt, params=dict(params))
    except RuntimeError as exc:
        if "Streaming query is not supported" in str(exc):
            return None
        raise from_chdb(exc) from None
    return _fetch(conn, handle, stats)


def _fetch(conn: Any, handle: Any, stats: Stats) -> Generator[bytes, None, None]:
    done = False
    try:
        while True:
            try:
                res = conn.streaming_fetch_result(handle)
            except RuntimeError as exc:
                done = True
                raise from_chdb(exc) from None
            if res is None or (res.rows_read() == 0 and not res.bytes()):
                done = True
                return
            stats.add_result(res)
            data = res.bytes()
            stats.result_bytes += len(data)
            if data:
                yield data
    finally:
        if not done:
            try:
                conn.streaming_cancel_query(handle)
            except RuntimeError:
                log.debug("cancelling a streaming query failed", exc_info=True)


def prefetch(
    chunks: Iterator[bytes], depth: int = 4, after: int = 0
) -> Generator[bytes, None, None]:
    """Read ``chunks`` in a thread of its own, up to ``depth`` ahead.

    An insert then receives the next piece of the body while chDB parses the last one
    (chDB releases the GIL). Errors from reading are raised here, in order. Closing the
    generator stops the reader and waits for it, so nobody reads the socket after.
    The first ``after`` bytes are read in the caller's thread: a body of unknown length
    (chunked) that turns out small never pays for a thread and its hand-offs.
    """
    seen = 0
    while after and seen <= after:
        chunk = next(chunks, None)
        if chunk is None:
            return
        seen += len(chunk)
        yield chunk
    pipe: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                pipe.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    thread = threading.Thread(target=reader, name="chworkers-embedded-body", daemon=True)
    thread.start()
    try:
        while True:
            item = pipe.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()
        thread.join()


def insert(
    conn: Any,
    statement: str | bytes,
    fmt: str,
    chunks: Iterable[bytes],
    stats: Stats,
    check: bool = True,
) -> None:
    """Stream ``chunks`` of ``fmt`` data into ``statement``; all or nothing.

    If reading the chunks fails (a truncated or undecodable body) or chDB rejects the
    data, the insert is cancelled and nothing of it is committed. ``check=False`` skips
    reading ``system.errors`` afterwards, for a table that cannot throw what chDB
    swallows (:mod:`chworkers.embedded.tablerisk`).
    """
    # system.errors, timed in whole seconds: the counts now, to compare with after.
    since, before = int(time.time()), (error_counts(conn) if check else {})
    try:
        handle = conn.send_insert(sql_bytes(statement), fmt)
    except RuntimeError as exc:
        raise from_chdb(exc) from None
    committed = False
    try:
        for chunk in chunks:
            if chunk:
                conn.insert_append(handle, chunk)
        res = conn.insert_done(handle)
        committed = True
    except RuntimeError as exc:
        raise from_chdb(exc) from None
    finally:
        if not committed:
            try:
                conn.insert_cancel(handle)
            except RuntimeError:
                log.debug("cancelling a streaming insert failed", exc_info=True)
    swallowed = swallowed_error(conn, before, since) if check else None
    if swallowed is not None:
        raise swallowed
    stats.written_rows += int(res.rows_written())
    stats.written_bytes += int(res.bytes_written())


#: Errors chDB's streaming insert does not raise: the table's sink throws them when the
#: insert commits, ``insert_done`` returns as if it succeeded (sometimes even with the
#: rows counted as written) and nothing is in the table. TOO_MANY_PARTS covers both
#: "Too many parts" (``parts_to_throw_insert``) and "Too many partitions for single
#: INSERT block" (``max_partitions_per_insert_block``); SIZES_OF_ARRAYS_DONT_MATCH (190:
#: the arrays of a ``Nested`` column's rows of different lengths) and VIOLATED_CONSTRAINT
#: (469: a ``CONSTRAINT ... CHECK``) are raised by the same sink, rows counted as written.
SWALLOWED_CODES = (190, 252, 469)

#: What ClickHouse adds to the message of an error a materialized view threw while an
#: insert pushed its block through it (any code: the view's SELECT, its target's sink).
#: chDB's streaming insert swallows those as well.
_VIEW_ERROR = "while pushing to view"


def error_counts(conn: Any) -> dict[int, int]:
    """The server's count of every error code so far (``system.errors``).

    An insert reads them before it starts and compares them after it
    (:func:`swallowed_error`): its own failure always shows as a higher count of its
    code with a ``last_error_time`` no older than its start. Read fresh each time, not
    remembered from the last insert: an insert that raised its error itself (a query,
    :mod:`chworkers.embedded.infile`) moves the counts without looking at them.
    """
    counts: dict[int, int] = {}
    for line in run(conn, "SELECT code, value FROM system.errors").bytes().decode().splitlines():
        code, total = line.split("\t")
        counts[int(code)] = int(total)
    return counts


def swallowed_error(conn: Any, before: dict[int, int], since: int) -> ServerError | None:
    """The error chDB swallowed during an insert that started at ``since`` with the
    counts ``before``, or None.

    Those of :data:`SWALLOWED_CODES`, and of any code whose last error a materialized
    view threw. Errors are server-wide and timed in whole seconds, so another insert's
    failure while this one ran is taken for this one's too; that errs on the safe side
    (the client retries an insert that landed, and its deduplication token drops it),
    while a lost insert answered 200 cannot happen. Counts are compared per code, so an
    insert is answered with the code whose count it raised, not with another code's
    error of the same second.
    """
    # The counts alone first: as cheap as any chDB query (the message and the time cost
    # 5x as much), so an insert that raised nothing pays only this. Of every code: a
    # view's error can have any.
    counts = error_counts(conn)
    rose = [c for c, total in counts.items() if total > before.get(c, 0)]
    if not rose:
        return None
    res = run(
        conn,
        # Numbers and base64 in TabSeparated: the request's own output settings are on
        # this connection, and none of them changes how these are written.
        "SELECT code, base64Encode(name), base64Encode(last_error_message), "
        "toUnixTimestamp(last_error_time) FROM system.errors "
        f"WHERE code IN ({', '.join(map(str, rose))}) "
        "ORDER BY last_error_time DESC, code",
    )
    for line in res.bytes().decode().splitlines():
        fields = line.split("\t")
        if int(fields[3]) < since:
            continue
        name, message = (base64.b64decode(f).decode("utf-8", "replace") for f in fields[1:3])
        if int(fields[0]) not in SWALLOWED_CODES and _VIEW_ERROR not in message:
            continue  # another query's error (a SELECT's, say): not this insert's
        return from_chdb(RuntimeError(f"Code: {fields[0]}. DB::Exception: {message}. ({name})"))
    return None
