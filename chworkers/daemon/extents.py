"""A batch's records kept by reference: where they are in the file they were read from.

A file read once (``follow = false``) is itself a durable copy of its records, so the
spool need not hold a second one: a batch of a file source may be spooled as
:class:`Extent` s (the file's path, its identity, a byte range) instead of its bytes, and
its records are read from the file again when the batch is inserted (and when it is
replayed after a restart). The spool file is then a few hundred bytes instead of the
batch; what the daemon saves per batch is a copy of it into a spool file, that file's
write and fsync, and reading it back with its checksum.

The source's file must stay as it was until its batches are in: :func:`read` checks that
the path still names the same file (device, inode, size, a checksum of its first bytes)
and raises :class:`~chworkers.errors.SpoolCorruptError` saying which file and bytes when
it does not. The bytes are made durable before the batch is: the source fsyncs the file
(:func:`make_durable`) before a reference to bytes not yet fsync'd is spooled.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from chworkers.errors import SpoolCorruptError

__all__ = ["Extent", "from_json", "make_durable", "merge", "read", "to_json"]


@dataclasses.dataclass(frozen=True)
class Extent:
    """Bytes ``start`` to ``end`` of the file at ``path`` (device ``dev``, inode ``ino``,
    whose first ``head_len`` bytes have the CRC-32 ``head``)."""

    path: str
    dev: int
    ino: int
    head: int
    head_len: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def merge(extents: Iterable[Extent]) -> tuple[Extent, ...]:
    """Consecutive extents of one file joined (a batch's records, read by reads of a
    MiB, are one range of a file, or two where it spans the end of one file)."""
    out: list[Extent] = []
    for extent in extents:
        last = out[-1] if out else None
        if (
            last is not None
            and (last.path, last.dev, last.ino) == (extent.path, extent.dev, extent.ino)
            and last.end == extent.start
        ):
            out[-1] = dataclasses.replace(
                last, end=extent.end, head=extent.head, head_len=extent.head_len
            )
        else:
            out.append(extent)
    return tuple(out)


def to_json(extents: Sequence[Extent]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(e) for e in extents]


def from_json(items: Iterable[Mapping[str, Any]]) -> tuple[Extent, ...]:
    return tuple(
        Extent(
            path=str(i["path"]),
            dev=int(i["dev"]),
            ino=int(i["ino"]),
            head=int(i["head"]),
            head_len=int(i["head_len"]),
            start=int(i["start"]),
            end=int(i["end"]),
        )
        for i in items
    )


def read(extents: Sequence[Extent], *, seq: int) -> bytes:
    """The records of batch ``seq``: its extents read from their files.

    :class:`SpoolCorruptError` when a file is gone or is no longer the one the records
    were read from (its ``__cause__`` the :class:`FileNotFoundError`, or none); another
    :class:`OSError` as its cause when reading failed (worth trying again)."""
    parts = [_read_one(extent, seq) for extent in extents]
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_one(extent: Extent, seq: int) -> bytes:
    where = f"batch {seq}: its records, bytes {extent.start}-{extent.end} of {extent.path},"
    try:
        fd = os.open(extent.path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise SpoolCorruptError(
            f"{where} cannot be inserted: the file is gone (a file read once must stay "
            "until the daemon has inserted it)",
            path=extent.path,
        ) from exc
    except OSError as exc:
        raise SpoolCorruptError(f"{where} cannot be read: {exc}", path=extent.path) from exc
    try:
        st = os.fstat(fd)
        head = os.pread(fd, extent.head_len, 0)
        same = (
            (st.st_dev, st.st_ino) == (extent.dev, extent.ino)
            and st.st_size >= extent.end
            and len(head) == extent.head_len
            and zlib.crc32(head) == extent.head
        )
        if not same:
            raise SpoolCorruptError(
                f"{where} cannot be inserted: the file was replaced, truncated or rewritten "
                "since they were read (a file read once must stay as it is until the daemon "
                "has inserted it)",
                path=extent.path,
            )
        data = os.pread(fd, extent.size, extent.start)
        while len(data) < extent.size:  # pread may return less (a signal, a large read)
            more = os.pread(fd, extent.size - len(data), extent.start + len(data))
            if not more:
                raise SpoolCorruptError(f"{where} cannot be read: the file ended", path=extent.path)
            data += more
        return data
    except OSError as exc:
        raise SpoolCorruptError(f"{where} cannot be read: {exc}", path=extent.path) from exc
    finally:
        os.close(fd)


def make_durable(fd: int) -> bool:
    """fsync a source file opened for reading, so that the records a spooled reference
    points at survive a crash of the machine as a spooled copy would; False when this
    file system cannot (then its batches are spooled as copies)."""
    try:
        os.fsync(fd)
    except OSError:
        return False
    return True
