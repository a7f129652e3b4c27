"""An INSERT whose data is all in memory: one chDB query that reads it from a pipe.

chDB's streaming insert (:func:`chworkers.embedded.streaming.insert`) swallows what the
table throws as the insert commits (too many parts, a constraint, a materialized view's
error), so after it the endpoint reads ``system.errors``: one more chDB query per insert.
A plain query raises those errors, and ``INSERT ... FROM INFILE`` reads its data from
any file, a pipe's ``/proc/self/fd/N`` included. So a request whose data arrived whole
within the first MiB, into a table that needs the check
(:mod:`chworkers.embedded.tablerisk`), is written into a pipe and inserted by one
query: no ``send_insert``/``insert_append``/``insert_done`` round trips and no check
afterwards, and no other insert's error of the same second taken for its own. (Into a
``Memory`` or ``Null`` table, which needs no check, the streaming insert is the cheaper:
``FROM INFILE`` costs about 0.5 ms more than it.)

A body is read whole before the query runs, so one cut short never reaches chDB; a
larger body is streamed (:func:`chworkers.embedded.streaming.insert`), where chDB parses
while the rest arrives and the check costs little next to the data.

An lz4 body goes the same way still compressed (:func:`insert_lz4`): chDB decompresses
it for a fraction of what python-lz4 costs, and the body streams into the pipe as it
arrives, in whole LZ4 blocks (:mod:`chworkers.embedded.lz4frames`), so one cut short
makes chDB's reader fail rather than end.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from itertools import chain
from typing import Any

from chworkers.embedded import queries, sql
from chworkers.embedded.lz4frames import Lz4Frames
from chworkers.embedded.summary import Stats
from chworkers.errors import ServerError

log = logging.getLogger(__name__)

#: What a pipe holds unless asked for more (Linux: 16 pages).
_PIPE_DEFAULT = 1 << 16
#: Linux's largest pipe an unprivileged process may ask for (``fs.pipe-max-size``).
_PIPE_MAX = 1 << 20


def statement(head: str, fmt: str, path: str, compression: str | None = None) -> bytes | None:
    """``head`` (``INSERT INTO t (a, b) SETTINGS ...``) reading ``fmt`` data from ``path``
    (compressed with ``compression``, chDB's name for it).

    None if the head has a shape ``FROM INFILE`` cannot be put into, or the format's
    name would need quoting: such an insert is streamed instead.
    """
    raw = queries.sql_bytes(head)
    at = sql.infile_at(raw)
    if at is None or not fmt.isidentifier():
        return None
    source = f"FROM INFILE {queries.quote_literal(path)}"
    if compression is not None:
        source += f" COMPRESSION {queries.quote_literal(compression)}"
    parts = [raw[:at].strip(), source.encode(), raw[at:].strip(), f"FORMAT {fmt}".encode()]
    # On lines of their own: the head may end in a ``--`` comment.
    return b"\n".join(p for p in parts if p)


def insert(
    conn: Any, head: str, fmt: str, data: bytes, stats: Stats, compression: str | None = None
) -> bool:
    """Insert ``data`` (all of the request's, decoded or in ``compression``) into ``head``
    with one query.

    Returns False, having done nothing, if the statement cannot take ``FROM INFILE``;
    raises ServerError for anything chDB refuses, including what the table throws as
    the insert commits.
    """
    read, write = os.pipe()
    writer: threading.Thread | None = None
    try:
        query = statement(head, fmt, f"/proc/self/fd/{read}", compression)
        if query is None:
            return False
        left = _fill(write, data)
        if left:
            # More than the pipe holds: the rest is written while chDB reads. Should
            # chDB stop reading (bad data), closing the read end below ends the writer.
            writer = threading.Thread(
                target=_write_rest,
                args=(write, data, len(data) - left),
                name="chworkers-embedded-infile",
                daemon=True,
            )
            writer.start()
        else:
            os.close(write)
        write = -1  # the writer (or the close above) owns it now
        res = queries.run(conn, query)
    finally:
        os.close(read)
        if writer is not None:
            writer.join()
        if write >= 0:
            os.close(write)
    stats.written_rows += int(res.rows_written())
    stats.written_bytes += int(res.bytes_written())
    return True


def _fill(fd: int, data: bytes) -> int:
    """Write what the pipe takes without blocking; the number of bytes left over."""
    if len(data) > _PIPE_DEFAULT:
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(_PIPE_MAX, len(data)))
        except OSError:  # the user's pipe budget is spent: a writer thread does the rest
            log.debug("could not grow an insert's pipe", exc_info=True)
    os.set_blocking(fd, False)
    view = memoryview(data)
    done = 0
    try:
        while done < len(data):
            done += os.write(fd, view[done:])
    except BlockingIOError:
        pass
    os.set_blocking(fd, True)
    return len(data) - done


def _write_rest(fd: int, data: bytes, done: int) -> None:
    view = memoryview(data)
    try:
        while done < len(data):
            done += os.write(fd, view[done:])
    except OSError:  # chDB stopped reading (it refused the data); the query says why
        log.debug("chDB stopped reading an insert's pipe", exc_info=True)
    finally:
        os.close(fd)


def insert_lz4(conn: Any, head: str, fmt: str, body: Iterator[bytes], stats: Stats) -> bool:
    """Insert an lz4 ``body`` (the request's data as it arrives, still compressed) into
    ``head`` with one query that decompresses it itself.

    A body that ends within the first MiB is read and checked whole first, so one that
    is cut short or is no LZ4 never reaches chDB. A larger one is written into the pipe
    by a thread, whole LZ4 blocks only, while chDB reads it; if it is cut short or turns
    out no LZ4, it ends in bytes chDB's reader fails on, so the query inserts nothing and
    the body's own error is raised. Returns False, having read nothing, if the statement
    cannot take ``FROM INFILE``.
    """
    if statement(head, fmt, "/dev/null", "lz4") is None:
        return False
    start = bytearray()
    while len(start) <= _PIPE_MAX:
        chunk = next(body, None)
        if chunk is None:
            frames = Lz4Frames()
            frames.feed(bytes(start)).release()
            frames.finish()
            return insert(conn, head, fmt, bytes(start), stats, "lz4")
        start += chunk
    return _insert_streamed(conn, head, fmt, chain([bytes(start)], body), stats)


def _insert_streamed(conn: Any, head: str, fmt: str, body: Iterator[bytes], stats: Stats) -> bool:
    read, write = os.pipe()
    writer: threading.Thread | None = None
    failed: list[BaseException] = []
    try:
        query = statement(head, fmt, f"/proc/self/fd/{read}", "lz4")
        if query is None:
            return False
        try:
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, _PIPE_MAX)
        except OSError:  # the user's pipe budget is spent: a small pipe works too
            log.debug("could not grow an insert's pipe", exc_info=True)
        writer = threading.Thread(
            target=_write_frames,
            args=(write, body, failed),
            name="chworkers-embedded-infile",
            daemon=True,
        )
        writer.start()
        write = -1  # the writer owns it now
        try:
            res = queries.run(conn, query)
        except ServerError:
            if writer is not None:
                os.close(read)  # a writer still writing stops (EPIPE)
                read = -1
                writer.join()
            if failed:  # chDB failed because the body did: say why the body did
                raise failed[0] from None
            raise
    finally:
        if read >= 0:
            os.close(read)
        if writer is not None:
            writer.join()
        if write >= 0:
            os.close(write)
    if failed:  # pragma: no cover - the poison makes the query fail
        raise failed[0]
    stats.written_rows += int(res.rows_written())
    stats.written_bytes += int(res.bytes_written())
    return True


def _write_frames(fd: int, body: Iterator[bytes], failed: list[BaseException]) -> None:
    frames = Lz4Frames()
    try:
        while True:
            try:
                chunk = next(body, None)
                if chunk is None:
                    frames.finish()
                    return
                view = frames.feed(chunk)
            except Exception as exc:  # the body broke (cut short, not LZ4): make chDB fail
                failed.append(exc)
                _write_all(fd, memoryview(frames.poison()))
                return
            _write_all(fd, view)
            view.release()
    except OSError:  # chDB stopped reading (it refused the data); the query says why
        log.debug("chDB stopped reading an insert's pipe", exc_info=True)
    finally:
        os.close(fd)


def _write_all(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
