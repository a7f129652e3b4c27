"""Messages between the supervisor and its workers, framed over pipes.

Each worker has two one-way pipes: tasks and control messages flow supervisor -> worker,
results and status flow back. Frames use ``multiprocess.Connection``'s wire format (a
4-byte big-endian length, or -1 and an 8-byte length); :func:`receive` reads them from
the descriptor itself, large ones straight into one buffer.

The supervisor never blocks on a worker: it writes its end with non-blocking ``os.write``
through an :class:`Outbox` and its loop waits for the pipe to become writable. A hung
worker that stops reading only fills its own pipe; it cannot stall the loop that is about
to kill it.

A message is one header frame (the count of out-of-band buffers, then a pickle protocol 5
stream) followed by that many buffer frames: batch buffers (numpy, pandas, Arrow) travel
next to the pickle, never copied into it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import struct
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

# Supervisor -> worker.
TASKS = "tasks"  # body: list of (task_id, kind, payload, buffers)
CONFIGURE = "configure"  # body: mapping of settings the worker applies between tasks
STOP = "stop"  # body: None; the worker finishes what it holds, then exits

# Worker -> supervisor.
READY = "ready"  # body: mapping (pid, start method, ...)
BOOT_FAILED = "boot_failed"  # body: text describing why init_process failed
RESULTS = "results"  # body: (list of results, metrics delta)
RETIRING = "retiring"  # body: reason; the worker exits after this message
LOG = "log"  # body: a log record as plain data (see chworkers.ops.workerlogs)

log = logging.getLogger(__name__)

_COUNT = struct.Struct("!I")
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


#: Frames up to this size are read into ``bytes`` (one pipe-full or less).
_SMALL_FRAME = 1 << 16

#: What a task pipe holds (Linux's default is 64 KiB): a task message up to the size
#: from which batches travel through shared memory instead
#: (:data:`chworkers.workers.sharedbuf.THRESHOLD`) goes in one write.
PIPE_SIZE = 1 << 20


class Receiver(Protocol):
    def fileno(self) -> int: ...


class Sender(Protocol):
    def send_bytes(self, buf: Any) -> None: ...


def encode(kind: str, body: Any) -> list[Any]:
    """Frames of one message; ``pickle.PickleBuffer`` objects in ``body`` go out of band."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps((kind, body), protocol=5, buffer_callback=buffers.append)
    return [_COUNT.pack(len(buffers)) + header, *(b.raw() for b in buffers)]


def decode(header: bytes | bytearray, buffers: Sequence[Any]) -> tuple[str, Any]:
    kind, body = pickle.loads(memoryview(header)[_COUNT.size :], buffers=buffers)
    return kind, body


def receive(conn: Receiver) -> tuple[str, Any]:
    """Read one whole message from a blocking connection.

    Frames are read from the descriptor directly: ``Connection.recv_bytes`` asks
    ``os.read`` for the whole remaining size on every call, which allocates (and then
    shrinks) a buffer of that size for each pipe-full, a 50 MB batch ~800 times. Large
    frames land in one ``bytearray`` (an out-of-band buffer then arrives as a read-only
    ``memoryview`` of it).
    """
    fd = conn.fileno()
    header = _frame(fd)
    (count,) = _COUNT.unpack_from(header)
    buffers = [_frame(fd) for _ in range(count)]
    return decode(header, buffers)


def _frame(fd: int) -> bytes | bytearray:
    (size,) = _SHORT.unpack(_read(fd, _SHORT.size))
    if size == -1:
        (size,) = _LONG.unpack(_read(fd, _LONG.size))
    return _read(fd, size)


def _read(fd: int, size: int) -> bytes | bytearray:
    if size <= _SMALL_FRAME:
        data = os.read(fd, size)
        while len(data) < size:
            more = os.read(fd, size - len(data))
            if not more:
                raise EOFError
            data += more
        return data
    buf = bytearray(size)
    view = memoryview(buf)
    done = 0
    while done < size:
        got = os.readv(fd, [view[done:]])
        if not got:
            raise EOFError
        done += got
    return buf


def send(conn: Sender, kind: str, body: Any) -> None:
    """Write one whole message to a blocking connection (the worker's side)."""
    for frame in encode(kind, body):
        conn.send_bytes(frame)


def frame_header(size: int) -> bytes:
    if size > 0x7FFFFFFF:
        return _SHORT.pack(-1) + _LONG.pack(size)
    return _SHORT.pack(size)


def widen(fd: int, size: int = PIPE_SIZE) -> None:
    """Make the pipe of ``fd`` hold ``size`` bytes, where the system lets it.

    With the default 64 KiB a 300 KB task crossed in five pipe-fulls, each a wake-up of
    the supervisor's loop and of the worker between two of its inserts. Beyond
    ``/proc/sys/fs/pipe-max-size``, or once the user's pipes hold
    ``pipe-user-pages-soft``, the kernel refuses and the pipe keeps its size.
    """
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None:  # not Linux
        return
    try:
        fcntl.fcntl(fd, setsize, size)
    except OSError as exc:
        log.debug("task pipe kept its size (%s)", exc)


class Outbox:
    """A non-blocking writer for the supervisor's end of a worker's task pipe."""

    __slots__ = ("_chunks", "_fd", "pending")

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        widen(fd)
        self._fd = fd
        self._chunks: deque[memoryview] = deque()
        #: Bytes queued but not yet accepted by the pipe.
        self.pending = 0

    def put(self, frames: Iterable[Any]) -> None:
        for frame in frames:
            view = memoryview(frame).cast("B")
            head = frame_header(len(view))
            if len(view) <= 16384:  # one write for small frames
                self._append(memoryview(head + bytes(view)))
            else:
                self._append(memoryview(head))
                self._append(view)

    def _append(self, view: memoryview) -> None:
        self._chunks.append(view)
        self.pending += len(view)

    def flush(self) -> bool:
        """Write what the pipe accepts now; True when nothing is left.

        Raises ``BrokenPipeError`` (an ``OSError``) when the worker is gone.
        """
        chunks = self._chunks
        while chunks:
            batch = [chunks[i] for i in range(min(len(chunks), 64))]
            try:
                written = os.writev(self._fd, batch)
            except BlockingIOError:
                return False
            self.pending -= written
            for chunk in batch:
                if written >= len(chunk):
                    written -= len(chunk)
                    chunks.popleft()
                else:
                    chunks[0] = chunk[written:]
                    return False
        return True

    def fileno(self) -> int:
        return self._fd
