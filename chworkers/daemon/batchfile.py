"""A spooled batch on disk: its file format, and writing a file durably.

One file per batch, written to a temporary name, fsync'd, renamed into place and the
directory fsync'd (:func:`write_durably`), so a batch is either wholly there or not at
all. File layout (little-endian)::

    b"CHWSPL01" | header length (u32) | header (JSON) | payload | b"CHWEND" | crc32 (u32)

A batch kept by reference (:mod:`chworkers.daemon.extents`) has an empty payload and
its extents in the header.

The CRC covers header and payload; :func:`read_batch` verifies all of it and says what
is wrong with a file that does not pass (:class:`~chworkers.errors.SpoolCorruptError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from chworkers.daemon import extents
from chworkers.daemon.extents import Extent
from chworkers.durable import fsync_directory
from chworkers.errors import SpoolCorruptError, SpoolWriteError

__all__ = [
    "SpooledBatch",
    "batch_overhead",
    "encode_batch",
    "file_size",
    "fsync_directory",
    "read_batch",
    "write_all",
    "write_durably",
]

MAGIC = b"CHWSPL01"
TRAILER = b"CHWEND"
_LEN = struct.Struct("<I")


@dataclasses.dataclass(frozen=True)
class SpooledBatch:
    """A batch as stored in the spool; ``payload`` is the exact bytes to insert."""

    seq: int
    table: str
    format: str
    rows: int
    token: str
    created: float
    payload: bytes
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pipeline: str = ""
    #: What the source needs to resume after this batch (e.g. a file offset).
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    path: Path | None = None
    #: The records by reference (:mod:`chworkers.daemon.extents`): where they are in the
    #: files they were read from; ``payload`` is then empty until the batch is loaded.
    extents: tuple[Extent, ...] = ()

    @property
    def size(self) -> int:
        return len(self.payload) if not self.extents else sum(e.size for e in self.extents)


def encode_batch(batch: SpooledBatch) -> bytes:
    header = json.dumps(
        {
            "seq": batch.seq,
            "table": batch.table,
            "format": batch.format,
            "rows": batch.rows,
            "token": batch.token,
            "created": batch.created,
            "settings": dict(batch.settings),
            "pipeline": batch.pipeline,
            "meta": dict(batch.meta),
            "payload_len": len(batch.payload),
            **({"extents": extents.to_json(batch.extents)} if batch.extents else {}),
        },
        separators=(",", ":"),
    ).encode()
    crc = zlib.crc32(batch.payload, zlib.crc32(header))
    return b"".join((MAGIC, _LEN.pack(len(header)), header, batch.payload, TRAILER, _LEN.pack(crc)))


def read_batch(path: Path) -> SpooledBatch:
    """Read and verify one spool file; :class:`SpoolCorruptError` says what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpoolCorruptError(f"cannot read: {exc.strerror}", path=str(path)) from exc
    fixed = len(MAGIC) + _LEN.size
    if len(data) < fixed or not data.startswith(MAGIC):
        raise SpoolCorruptError("not a spool file (bad magic or truncated)", path=str(path))
    (header_len,) = _LEN.unpack_from(data, len(MAGIC))
    header_end = fixed + header_len
    try:
        header = json.loads(data[fixed:header_end])
        payload_len = int(header["payload_len"])
        refs = extents.from_json(header.get("extents") or ())
    except (ValueError, KeyError, TypeError) as exc:
        raise SpoolCorruptError(f"unreadable header: {exc}", path=str(path)) from exc
    payload_end = header_end + payload_len
    if len(data) != payload_end + len(TRAILER) + _LEN.size:
        raise SpoolCorruptError(
            f"truncated: {len(data)} bytes, expected {payload_end + len(TRAILER) + _LEN.size}",
            path=str(path),
        )
    if data[payload_end : payload_end + len(TRAILER)] != TRAILER:
        raise SpoolCorruptError("bad trailer", path=str(path))
    (crc,) = _LEN.unpack_from(data, payload_end + len(TRAILER))
    payload = data[header_end:payload_end]
    if zlib.crc32(payload, zlib.crc32(data[fixed:header_end])) != crc:
        raise SpoolCorruptError("checksum mismatch", path=str(path))
    return SpooledBatch(
        seq=int(header["seq"]),
        table=str(header["table"]),
        format=str(header["format"]),
        rows=int(header["rows"]),
        token=str(header["token"]),
        created=float(header["created"]),
        payload=payload,
        settings=dict(header.get("settings") or {}),
        pipeline=str(header.get("pipeline", "")),
        meta=dict(header.get("meta") or {}),
        path=path,
        extents=refs,
    )


def file_size(batch: SpooledBatch) -> int:
    """The bytes ``batch`` counts against the spool's cap: its file's size (an estimate
    when it has no file), and a batch kept by reference also its records' (they wait to
    be inserted all the same: the cap bounds the backlog, and so the memory and the
    number of files it takes, as it does for copies)."""
    referenced = batch.size if batch.extents else 0
    if batch.path is not None:
        try:
            return batch.path.stat().st_size + referenced
        except OSError:
            pass
    return len(batch.payload) + 256 + referenced


def batch_overhead(
    table: str,
    pipeline: str = "",
    meta: Mapping[str, Any] | None = None,
    refs: Sequence[Extent] = (),
) -> int:
    """An upper bound of the bytes a batch file needs beyond its payload."""
    size = 512 + len(table) + len(pipeline) + len(json.dumps(dict(meta or {})))
    return size + (len(json.dumps(extents.to_json(refs))) if refs else 0)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_durably(
    path: Path,
    data: bytes,
    *,
    fsync: bool = True,
    undo: bool = False,
    place: Callable[[Path, Path], bool] | None = None,
) -> bool:
    """Write ``data`` to ``path`` atomically and durably, or raise
    :class:`SpoolWriteError`. A failure removes the temporary file; with ``undo``, also
    the target when the failure came after the rename (a batch file must not stay
    when its write is reported failed: a retry would spool its records twice).
    ``place(tmp, path)``: renames the written file into place itself, or says False
    (then nothing is written, and False returned)."""
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    renamed = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if place is None:
            os.replace(tmp, path)
        elif not place(tmp, path):
            tmp.unlink(missing_ok=True)
            return False
        renamed = True
        if fsync:
            fsync_directory(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if renamed and undo:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise SpoolWriteError(
            f"cannot write {path}: {exc.strerror or exc}", path=str(path), errno=exc.errno
        ) from exc
    return True
