"""The durable on-disk spool: every accepted batch is safe before it is acknowledged.

One file per batch, written to a temporary name, fsync'd, renamed into place and the
directory fsync'd, so a batch is either wholly in the spool or not at all. A batch is
removed only after ClickHouse confirmed its insert. Its deduplication token is fixed
when it is spooled, so a replay after a crash sends byte-identical data with the same
token and ClickHouse drops what it already has.

File layout (little-endian)::

    b"CHWSPL01" | header length (u32) | header (JSON) | payload | b"CHWEND" | crc32 (u32)

The CRC covers header and payload. A file that is truncated, has a bad CRC or an
unreadable header is moved to ``quarantine/`` with a log line and a metric, and the
daemon goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from chworkers.dedup import batch_token
from chworkers.errors import SpoolCorruptError, SpoolFullError
from chworkers.metrics import Metrics

log = logging.getLogger(__name__)

MAGIC = b"CHWSPL01"
TRAILER = b"CHWEND"
_LEN = struct.Struct("<I")
_NAME = re.compile(r"^(\d{20})\.batch$")

Policy = Literal["block", "reject", "drop_oldest"]

#: Batch numbers are reserved (and the reservation persisted) this many at a time.
SEQ_BLOCK = 1024


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

    @property
    def size(self) -> int:
        return len(self.payload)


class Spool:
    """A directory of batch files with a size cap and a full-spool policy."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = 1 << 30,
        policy: Policy = "block",
        fsync: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.quarantine_dir = self.directory / "quarantine"
        self.max_bytes = max_bytes
        self.policy = policy
        self.fsync = fsync
        self._metrics = metrics
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._sizes: dict[int, int] = {}  # seq -> file size, for every batch on disk
        self._created: dict[int, float] = {}
        self._reserved = 0
        self._next_seq = 1
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self.spool_id = self._load_id()
        # Sequence numbers name files and make deduplication tokens, so they must never
        # repeat, not even after every batch was confirmed and the directory is empty:
        # a repeated token would make ClickHouse drop new data as a duplicate. The
        # high-water mark is persisted in blocks (one small fsync'd write per block).
        self._seq_file = self.directory / "seq"
        self._seq_ceiling = self._load_seq_ceiling()
        self._next_seq = self._seq_ceiling

    # -- startup -------------------------------------------------------------------

    def _load_seq_ceiling(self) -> int:
        try:
            return max(1, int(self._seq_file.read_text().strip()))
        except FileNotFoundError:
            return 1
        except ValueError as exc:
            raise SpoolCorruptError(
                f"{self._seq_file} is unreadable ({exc}); it must hold the next batch number. "
                "Set it above the highest number ever used, or move the spool aside",
                path=str(self._seq_file),
            ) from exc

    def _load_id(self) -> str:
        path = self.directory / "spool-id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            spool_id = uuid.uuid4().hex[:16]
            self._write_durably(path, spool_id.encode())
            return spool_id

    def recover(self) -> list[SpooledBatch]:
        """Scan the directory, quarantine bad files, and return the batches to replay.

        Temporary files are leftovers of writes that never completed (and so were never
        acknowledged): they are deleted.
        """
        batches: list[SpooledBatch] = []
        for entry in sorted(self.directory.iterdir()):
            if entry.name.startswith(".tmp-"):
                entry.unlink(missing_ok=True)
                continue
            m = _NAME.match(entry.name)
            if m is None:
                continue
            try:
                batch = read_batch(entry)
            except SpoolCorruptError as exc:
                self._quarantine(entry, str(exc))
                continue
            batches.append(batch)
        with self._lock:
            for batch in batches:
                self._sizes[batch.seq] = _file_size(batch)
                self._created[batch.seq] = batch.created
                self._next_seq = max(self._next_seq, batch.seq + 1)
        self._publish()
        if batches:
            log.info("spool %s: %d batches to replay", self.directory, len(batches))
        return batches

    def _quarantine(self, path: Path, reason: str) -> None:
        self.quarantine_dir.mkdir(exist_ok=True)
        target = self.quarantine_dir / f"{path.name}.{int(time.time())}"
        os.replace(path, target)
        log.error("spool: quarantined %s: %s (moved to %s)", path.name, reason, target)
        if self._metrics is not None:
            self._metrics.spool_quarantined.inc()

    # -- writing -------------------------------------------------------------------

    def put(
        self,
        table: str,
        payload: bytes,
        *,
        format: str,
        rows: int,
        settings: Mapping[str, Any] | None = None,
        pipeline: str = "",
        meta: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> SpooledBatch:
        """Write a batch durably and return it (with its fixed token) for inserting.

        When the spool is full: ``block`` waits up to ``timeout`` for space, ``reject``
        raises :class:`SpoolFullError` at once, ``drop_oldest`` deletes the oldest
        batches (counted in a metric; one already being inserted may still land).
        """
        header_probe = 512 + len(table) + len(pipeline) + len(json.dumps(dict(meta or {})))
        size = len(payload) + header_probe
        seq = self._reserve(size, timeout)
        try:
            batch = SpooledBatch(
                seq=seq,
                table=table,
                format=format,
                rows=rows,
                token=batch_token(self.spool_id, seq),
                created=time.time(),
                payload=payload,
                settings=dict(settings or {}),
                pipeline=pipeline,
                meta=dict(meta or {}),
            )
            path = self.directory / f"{seq:020d}.batch"
            self._write_durably(path, encode_batch(batch))
        except BaseException:
            with self._lock:
                self._reserved -= size
                self._space.notify_all()
            raise
        batch = dataclasses.replace(batch, path=path)
        with self._lock:
            self._reserved -= size
            self._sizes[seq] = _file_size(batch)
            self._created[seq] = batch.created
        self._publish()
        return batch

    def _reserve(self, size: int, timeout: float | None) -> int:
        dropped: list[int] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._used() + size > self.max_bytes and self._sizes:
                if self.policy == "drop_oldest":
                    victim = min(self._sizes)
                    self._sizes.pop(victim)
                    self._created.pop(victim, None)
                    dropped.append(victim)
                    continue
                if self.policy == "reject":
                    raise self._full_error(size)
                remaining = None if deadline is None else deadline - time.monotonic()
                if (remaining is not None and remaining <= 0) or self._closed:
                    raise self._full_error(size)
                self._space.wait(remaining)
            seq = self._next_seq
            self._next_seq += 1
            if self._next_seq >= self._seq_ceiling:
                # Rare (once per SEQ_BLOCK batches), so done under the lock: numbers
                # must be durable before they are handed out.
                self._seq_ceiling = self._next_seq + SEQ_BLOCK
                self._write_durably(self._seq_file, str(self._seq_ceiling).encode())
            self._reserved += size
        for victim in dropped:
            (self.directory / f"{victim:020d}.batch").unlink(missing_ok=True)
            log.warning("spool full: dropped the oldest batch %d (policy drop_oldest)", victim)
            if self._metrics is not None:
                self._metrics.spool_dropped.inc()
        return seq

    def _used(self) -> int:
        return sum(self._sizes.values()) + self._reserved

    def _full_error(self, size: int) -> SpoolFullError:
        return SpoolFullError(
            f"spool {self.directory} is full: {self._used()} of {self.max_bytes} bytes used, "
            f"a batch of {size} bytes does not fit (policy {self.policy})",
            used=self._used(),
            max_bytes=self.max_bytes,
        )

    def _write_durably(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self.fsync:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    # -- confirming ----------------------------------------------------------------

    def remove(self, batch: SpooledBatch) -> None:
        """Forget a batch once ClickHouse confirmed it."""
        (self.directory / f"{batch.seq:020d}.batch").unlink(missing_ok=True)
        with self._lock:
            self._sizes.pop(batch.seq, None)
            self._created.pop(batch.seq, None)
            self._space.notify_all()
        self._publish()

    def close(self) -> None:
        """Wake producers blocked on a full spool; they get :class:`SpoolFullError`."""
        with self._lock:
            self._closed = True
            self._space.notify_all()

    # -- observing -----------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        with self._lock:
            oldest = min(self._created.values(), default=None)
            return {
                "batches": len(self._sizes),
                "bytes": sum(self._sizes.values()),
                "oldest_age_seconds": 0.0 if oldest is None else max(0.0, time.time() - oldest),
                "max_bytes": self.max_bytes,
            }

    def _publish(self) -> None:
        if self._metrics is None:
            return
        s = self.stats()
        self._metrics.spool_batches.set(s["batches"])
        self._metrics.spool_bytes.set(s["bytes"])
        self._metrics.spool_oldest_age.set(s["oldest_age_seconds"])
        self._metrics.spool_max_bytes.set(self.max_bytes)

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<Spool {self.directory}: {s['batches']:.0f} batches, {s['bytes']:.0f} of "
            f"{self.max_bytes} bytes, policy {self.policy}>"
        )


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
    )


def _file_size(batch: SpooledBatch) -> int:
    if batch.path is not None:
        try:
            return batch.path.stat().st_size
        except OSError:
            pass
    return len(batch.payload) + 256
