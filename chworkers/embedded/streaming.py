"""Streaming through chDB: a SELECT's result block by block, a request body read
ahead of the engine, and an INSERT fed chunk by chunk, all or nothing."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any

from chworkers.embedded.exceptions import from_chdb
from chworkers.embedded.queries import sql_bytes
from chworkers.embedded.summary import Stats
from chworkers.embedded.swallowed import error_counts, swallowed_error

log = logging.getLogger(__name__)


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
