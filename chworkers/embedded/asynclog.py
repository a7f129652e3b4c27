"""``system.asynchronous_insert_log``: one row per asynchronous insert, written at its
flush, as ClickHouse's ``AsynchronousInsertLog``.

As the server (``AsynchronousInsertQueue::processData``): each entry of a flush gets a
row, ``event_time`` its arrival, ``rows`` and ``bytes`` its own, ``status`` ``Ok``,
``ParsingError`` (its own data did not parse: ``exception`` says why) or ``FlushError``
(the flush's insert failed: its error, every remaining entry's), and ``flush_time`` and
``flush_query_id`` the flush's. The rows wait in memory and are written every
``flush_interval_milliseconds`` (7.5 s, the server's default), at ``SYSTEM FLUSH LOGS``
and when the endpoint stops, into a MergeTree table of chDB's ``system`` database with
the server's columns (``src/Interpreters/AsynchronousInsertLog.cpp``). chDB's
``system`` database lives in memory, so the table is attached again at each start from
its data (``DIR/data/system/asynchronous_insert_log/``); it is made at the first write.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chworkers.embedded import queries, streaming
from chworkers.embedded.engine import Engine, close_quietly
from chworkers.embedded.summary import Stats
from chworkers.errors import ServerError

log = logging.getLogger(__name__)

TABLE = "system.asynchronous_insert_log"
#: The server's ``flush_interval_milliseconds`` for its system logs.
FLUSH_INTERVAL = 7.5
#: Rows kept while they cannot be written (the oldest go first beyond it).
MAX_PENDING = 1_000_000

_COLUMNS = """
    hostname LowCardinality(String),
    event_date Date,
    event_time DateTime,
    event_time_microseconds DateTime64(6),
    query String,
    database LowCardinality(String),
    table LowCardinality(String),
    format LowCardinality(String),
    query_id String,
    bytes UInt64,
    rows UInt64,
    exception String,
    status Enum8('Ok' = 0, 'ParsingError' = 1, 'FlushError' = 2),
    data_kind Enum8('Parsed' = 0, 'Preprocessed' = 1),
    flush_time DateTime,
    flush_time_microseconds DateTime64(6),
    flush_query_id String
"""
#: ATTACH (of the data a previous start left, or of none) wants a UUID; a fixed one.
_UUID = "6f1b7d2e-5a0c-4c1e-9d3b-a5f0c2e8b417"
_CREATE = (
    f"ATTACH TABLE IF NOT EXISTS {TABLE} UUID '{_UUID}' ({_COLUMNS}) ENGINE = MergeTree "
    "PARTITION BY toYYYYMM(event_date) ORDER BY (event_date, event_time)"
)


@dataclass(frozen=True)
class Row:
    """One entry's row (the flush's columns are added when the flush ends)."""

    created: float
    query: str
    database: str
    table: str
    fmt: str
    query_id: str
    nbytes: int
    rows: int
    status: str = "Ok"
    exception: str = ""


class AsyncInsertLog:
    """The rows waiting to be written, and the thread that writes them."""

    def __init__(self, engine: Engine, data_dir: Path, interval: float = FLUSH_INTERVAL) -> None:
        self.engine = engine
        self.interval = interval
        self.hostname = socket.gethostname()
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # the pending rows
        self._writing = threading.Lock()  # one write at a time, in order
        self._attached = (data_dir / "data" / "system" / "asynchronous_insert_log").is_dir()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Attach the table if it has data (SELECTs find it at once), start writing."""
        if self._attached:
            with self._connection() as conn:
                queries.run(conn, _CREATE)
        self._thread = threading.Thread(
            target=self._run, name="chworkers-async-insert-log", daemon=True
        )
        self._thread.start()

    def add(self, rows: list[Row], flush_time: float, flush_query_id: str) -> None:
        """A flush's rows (``status`` ``Ok`` ones take ``exception`` if it failed)."""
        out = []
        for row in rows:
            out.append(
                {
                    "hostname": self.hostname,
                    "event_date": time.strftime("%Y-%m-%d", time.localtime(row.created)),
                    "event_time": int(row.created),
                    "event_time_microseconds": f"{row.created:.6f}",
                    "query": row.query,
                    "database": row.database,
                    "table": row.table,
                    "format": row.fmt,
                    "query_id": row.query_id,
                    "bytes": row.nbytes,
                    "rows": row.rows,
                    "exception": row.exception,
                    "status": row.status,
                    "data_kind": "Parsed",
                    "flush_time": int(flush_time),
                    "flush_time_microseconds": f"{flush_time:.6f}",
                    "flush_query_id": flush_query_id,
                }
            )
        with self._lock:
            self._pending.extend(out)
            if len(self._pending) > MAX_PENDING:
                lost = len(self._pending) - MAX_PENDING
                del self._pending[:lost]
                log.warning("%s: %d rows not written were dropped (too many waiting)", TABLE, lost)

    def flush(self) -> None:
        """Write what waits now (``SYSTEM FLUSH LOGS``); raises ServerError if chDB
        refuses (the rows stay for the next try)."""
        with self._writing:
            with self._lock:
                rows, self._pending = self._pending, []
            if not rows:
                return
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
            try:
                with self._connection() as conn:
                    if not self._attached:
                        queries.run(conn, _CREATE)
                        self._attached = True
                    streaming.insert(
                        conn,
                        f"INSERT INTO {TABLE}",
                        "JSONEachRow",
                        [data],
                        Stats(),
                        check=False,
                    )
            except ServerError:
                with self._lock:
                    self._pending[:0] = rows
                raise

    def close(self) -> None:
        """Stop the thread and write what waits."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.flush()
        except ServerError as err:
            log.warning("%s: rows not written at stop: %s", TABLE, err.message)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except ServerError as err:
                log.warning("%s: writing failed, retried later: %s", TABLE, err.message)
            except Exception:  # a bug: the thread must go on
                log.exception("%s: writing failed", TABLE)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        conn = self.engine.connect()
        try:
            yield conn
        finally:
            close_quietly(conn)
