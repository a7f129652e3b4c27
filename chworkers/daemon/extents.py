"""A batch's records kept by reference: where they are in the file they were read from.

A file read once (``follow = false``) is itself a durable copy of its records, so the
spool need not hold a second one: a batch of a file source may be spooled as
:class:`Extent` s (the file's path, its identity, a byte range) instead of its bytes, and
its records are read from the file again when the batch is inserted (and when it is
replayed after a restart). The spool file is then a few hundred bytes instead of the
batch; what the daemon saves per batch is a copy of it into a spool file, that file's
write and fsync, and reading it back with its checksum.

A reference names the file by a hard link in the spool's ``links/`` directory
(:mod:`chworkers.daemon.spoollinks`) where it can, so that removing or renaming the
source (a cleanup job, logrotate) does not take its records away; ``source`` is then the
path it was read under, for messages. The bytes must stay as they were until the batch
is in (a file truncated or rewritten in place keeps its inode): :func:`read` checks that
the path still names the same file (device, inode, size, a checksum of its first bytes)
and the range's sample checksum (:func:`sample_crc`), and raises
:class:`~chworkers.errors.SpoolCorruptError` saying which file and bytes when it does not.
The bytes are made durable before the batch is: the source fsyncs the file
(:func:`make_durable`) before a reference to bytes not yet fsync'd is spooled.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from chworkers.errors import SpoolCorruptError

__all__ = [
    "Extent",
    "from_json",
    "make_durable",
    "merge",
    "merge_records",
    "read",
    "sample_crc",
    "to_json",
]

#: The range's checksum covers this many bytes at its start, at its end and at every
#: :data:`SAMPLE_EVERY` bytes between: a truncated or rewritten file is told apart
#: without a second pass over every byte (a full CRC costs ~4 ms per 8 MiB batch here).
SAMPLE = 4096
SAMPLE_EVERY = 1 << 20


@dataclasses.dataclass(frozen=True)
class Extent:
    """Bytes ``start`` to ``end`` of the file at ``path`` (device ``dev``, inode ``ino``,
    whose first ``head_len`` bytes have the CRC-32 ``head``); ``source``: the path the
    file was read under when ``path`` is the spool's link to it; ``sample``: the
    range's :func:`sample_crc` (None in references spooled before it existed)."""

    path: str
    dev: int
    ino: int
    head: int
    head_len: int
    start: int
    end: int
    source: str = ""
    sample: int | None = None

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
                last, end=extent.end, head=extent.head, head_len=extent.head_len, sample=None
            )
        else:
            out.append(extent)
    return tuple(out)


def merge_records(pieces: Iterable[tuple[Extent, bytes]]) -> tuple[Extent, ...]:
    """:func:`merge` of extents whose bytes are at hand (each extent with its records),
    each merged extent with the sample checksum of its bytes."""
    out: list[tuple[Extent, list[bytes]]] = []
    for extent, records in pieces:
        if out:
            last, chunks = out[-1]
            joined = merge((last, extent))
            if len(joined) == 1:
                chunks.append(records)
                out[-1] = (joined[0], chunks)
                continue
        out.append((extent, [records]))
    return tuple(dataclasses.replace(e, sample=sample_crc(chunks)) for e, chunks in out)


def sample_crc(data: bytes | Sequence[bytes]) -> int:
    """A CRC-32 of samples of ``data`` (bytes, or a sequence of chunks that are its
    bytes in order): :data:`SAMPLE` bytes at its start, at its end and at every
    :data:`SAMPLE_EVERY` bytes."""
    chunks = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
    starts = [0]
    for chunk in chunks:
        starts.append(starts[-1] + len(chunk))
    size = starts[-1]
    crc = zlib.crc32(size.to_bytes(8, "little"))
    for begin in [*range(0, size, SAMPLE_EVERY), max(0, size - SAMPLE)]:
        end = min(size, begin + SAMPLE)
        i = bisect.bisect_right(starts, begin) - 1
        while begin < end:
            chunk, at = chunks[i], starts[i]
            piece = memoryview(chunk)[begin - at : min(end, at + len(chunk)) - at]
            crc = zlib.crc32(piece, crc)
            begin += len(piece)
            i += 1
    return crc


def to_json(extents: Sequence[Extent]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in dataclasses.asdict(e).items() if v not in ("", None)} for e in extents
    ]


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
            source=str(i.get("source", "")),
            sample=None if i.get("sample") is None else int(i["sample"]),
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
    where = (
        f"batch {seq}: its records, bytes {extent.start}-{extent.end} of "
        f"{extent.source or extent.path},"
    )
    try:
        fd = os.open(extent.path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise SpoolCorruptError(
            f"{where} cannot be inserted: the file is gone"
            + (" (and so is the spool's link to it)" if extent.source else ""),
            path=extent.source or extent.path,
        ) from exc
    except OSError as exc:
        raise SpoolCorruptError(
            f"{where} cannot be read: {exc}", path=extent.source or extent.path
        ) from exc
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
                "since they were read (a file read once must not be truncated or rewritten "
                "in place until the daemon has inserted it; spool_data = 'copy' is for such "
                "files)",
                path=extent.source or extent.path,
            )
        data = os.pread(fd, extent.size, extent.start)
        while len(data) < extent.size:  # pread may return less (a signal, a large read)
            more = os.pread(fd, extent.size - len(data), extent.start + len(data))
            if not more:
                raise SpoolCorruptError(
                    f"{where} cannot be read: the file ended", path=extent.source or extent.path
                )
            data += more
        if extent.sample is not None and sample_crc(data) != extent.sample:
            raise SpoolCorruptError(
                f"{where} cannot be inserted: the file was rewritten in place since they "
                "were read (its bytes there changed)",
                path=extent.source or extent.path,
            )
        return data
    except OSError as exc:
        raise SpoolCorruptError(
            f"{where} cannot be read: {exc}", path=extent.source or extent.path
        ) from exc
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
