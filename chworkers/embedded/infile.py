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
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from typing import Any

from chworkers.embedded import queries, sql
from chworkers.embedded.summary import Stats

log = logging.getLogger(__name__)

#: What a pipe holds unless asked for more (Linux: 16 pages).
_PIPE_DEFAULT = 1 << 16
#: Linux's largest pipe an unprivileged process may ask for (``fs.pipe-max-size``).
_PIPE_MAX = 1 << 20


def statement(head: str, fmt: str, path: str) -> bytes | None:
    """``head`` (``INSERT INTO t (a, b) SETTINGS ...``) reading ``fmt`` data from ``path``.

    None if the head has a shape ``FROM INFILE`` cannot be put into, or the format's
    name would need quoting: such an insert is streamed instead.
    """
    raw = queries.sql_bytes(head)
    at = sql.infile_at(raw)
    if at is None or not fmt.isidentifier():
        return None
    parts = [raw[:at].strip(), f"FROM INFILE {queries.quote_literal(path)}".encode()]
    parts += [raw[at:].strip(), f"FORMAT {fmt}".encode()]
    # On lines of their own: the head may end in a ``--`` comment.
    return b"\n".join(p for p in parts if p)


def insert(conn: Any, head: str, fmt: str, data: bytes, stats: Stats) -> bool:
    """Insert ``data`` (all of the request's, decoded) into ``head`` with one query.

    Returns False, having done nothing, if the statement cannot take ``FROM INFILE``;
    raises ServerError for anything chDB refuses, including what the table throws as
    the insert commits.
    """
    read, write = os.pipe()
    writer: threading.Thread | None = None
    try:
        query = statement(head, fmt, f"/proc/self/fd/{read}")
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
