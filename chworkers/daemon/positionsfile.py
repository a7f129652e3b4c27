"""One pipeline's saved file positions on disk: a snapshot and a journal of changes.

``<pipeline>.json`` is the snapshot, ``{path: position}``, the format of earlier versions
(which had only it): written whole to a temporary file, fsync'd, renamed over the old
one, the directory fsync'd. ``<pipeline>.journal`` holds what changed since, one record
per save, appended and fsync'd before the save returns, so a save costs what changed
(a position is ~150 bytes), not every position kept. A record is one line::

    <crc32 of the JSON, 8 hex digits> {"<path>": {position} or null (forgotten), ...}

The journal's first line names the snapshot it follows, ``base <crc32> <size>`` of the
snapshot's bytes: a journal found beside another snapshot is not applied (see below).
The positions are the snapshot with the journal's records applied in order. A record
that is not whole or whose checksum does not match (a save torn by a crash, a power
loss) ends the journal: it and anything after it are ignored (only a save that never
returned can be torn, so no position confirmed to a caller is lost).

When the journal grows past the snapshot's size (and :data:`COMPACT_MIN_BYTES`) the
positions are written as a new snapshot and the journal is emptied (its first line
naming the new snapshot): a save's cost stays proportional to what changed, amortized.
The snapshot is durable before the journal is emptied; after a crash between the two the
old journal names the old snapshot and is not applied over the new one, which holds all
it held. So is a journal left by a crash when an earlier version, which knows only the
snapshot, then ran and wrote it anew: applied, its records would set positions back to
where they were before that run, and lines read since would be read twice. The first
save of a process compacts too (a torn record left by a crash is dropped then,
never appended after), as does a save after one that failed (a write that ran out of
room may have left part of a record behind), and :meth:`PositionsFile.close`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

from chworkers.daemon.batchfile import fsync_directory, write_all
from chworkers.daemon.statepaths import unusable
from chworkers.errors import UnusablePathError

__all__ = ["COMPACT_MIN_BYTES", "Position", "PositionsFile", "damaged", "journal_record"]

log = logging.getLogger(__name__)

#: A file's position: ``dev``, ``ino``, ``offset`` and its fingerprint (``head``,
#: ``head_len``; a columnar file also ``size``).
Position = dict[str, int]

#: The journal is compacted into the snapshot once it holds more than this and more than
#: the snapshot's size.
COMPACT_MIN_BYTES = 64 * 1024


def journal_record(changes: Mapping[str, Mapping[str, int] | None]) -> bytes:
    """One journal record: the changed positions (None: forgotten), checksummed."""
    payload = json.dumps(changes, sort_keys=True, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


class PositionsFile:
    """A pipeline's positions on disk (see the module's docstring); not thread-safe:
    :class:`~chworkers.daemon.checkpoints.Checkpoints` calls it under its lock."""

    def __init__(self, directory: Path, pipeline: str) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in pipeline)
        self.directory = directory
        self.pipeline = pipeline
        self.snapshot = directory / f"{safe}.json"
        self.journal = directory / f"{safe}.journal"
        self._fd: int | None = None  # the journal, open to append; None: compact first
        self._journal_bytes = 0
        self._snapshot_bytes = 0

    def __repr__(self) -> str:
        state = "compacting at the next save" if self._fd is None else "appending"
        return (
            f"<PositionsFile {self.snapshot.name}: snapshot {self._snapshot_bytes} bytes, "
            f"journal {self._journal_bytes} bytes, {state}>"
        )

    def read(self) -> dict[str, Position]:
        """The saved positions: the snapshot, the journal's whole records applied."""
        # The journal first: read while a daemon compacts, an old journal over a newer
        # snapshot changes nothing, while an emptied journal over the older snapshot
        # would lose what it held.
        # One the daemon's user cannot read (another user's) is refused: starting over
        # would read the pipeline's files again (UnusablePathError, exit code 3).
        try:
            journal = self.journal.read_bytes()
        except FileNotFoundError:
            journal = b""
        except OSError as exc:
            raise unusable("positions file", self.journal, exc, "read") from exc
        positions: dict[str, Position] = {}
        snapshot = b""
        try:
            snapshot = self.snapshot.read_bytes()
            data = json.loads(snapshot)
            positions = {str(p): _position(pos) for p, pos in data.items()}
        except FileNotFoundError:
            pass
        except (ValueError, AttributeError, TypeError) as exc:
            raise damaged(self.snapshot, self.pipeline, exc) from exc
        except OSError as exc:
            raise unusable("positions file", self.snapshot, exc, "read") from exc
        at = 0
        if journal.startswith(_BASE):
            end = journal.find(b"\n")
            if end < 0 or journal[:end] != _base_line(snapshot)[:-1]:
                log.warning(
                    "positions journal %s follows another snapshot than %s (a crash during "
                    "its compaction, or an earlier version ran since): not applied",
                    self.journal,
                    self.snapshot.name,
                )
                return positions
            at = end + 1
        while at < len(journal):
            end = journal.find(b"\n", at)
            changes = None if end < 0 else _changes(journal[at:end])
            if changes is None:
                # A torn last record is what a crash mid-save leaves: nothing confirmed.
                log.warning(
                    "positions journal %s: the record at byte %d is torn or damaged; it "
                    "and the %d bytes after it are ignored",
                    self.journal,
                    at,
                    len(journal) - at,
                )
                break
            for path, pos in changes.items():
                if pos is None:
                    positions.pop(path, None)
                else:
                    positions[path] = pos
            at = end + 1
        return positions

    def save(
        self,
        changes: Mapping[str, Mapping[str, int] | None],
        positions: Mapping[str, Mapping[str, int]],
    ) -> int:
        """Make ``changes`` durable (``positions``: all of them, with the changes): a
        journal record, or a new snapshot when one is due. The bytes written."""
        record = journal_record(changes)
        if self._fd is None or self._journal_bytes + len(record) > max(
            COMPACT_MIN_BYTES, self._snapshot_bytes
        ):
            return self.compact(positions)
        try:
            write_all(self._fd, record)
            os.fdatasync(self._fd)
        except OSError:
            self._drop_journal()  # part of the record may be there: compact next time
            raise
        self._journal_bytes += len(record)
        return len(record)

    def compact(self, positions: Mapping[str, Mapping[str, int]]) -> int:
        """Write ``positions`` as the snapshot and empty the journal; the bytes written."""
        data = json.dumps(positions, sort_keys=True).encode()
        tmp = self.snapshot.with_suffix(".tmp")
        try:
            if self._fd is None:
                self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.snapshot)
            fsync_directory(self.directory)  # the rename (and a new journal) survive a crash
            os.ftruncate(self._fd, 0)  # only once the snapshot holds what it held
            base = _base_line(data)
            write_all(self._fd, base)
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            self._drop_journal()
            raise
        self._snapshot_bytes = len(data)
        self._journal_bytes = 0  # (records: its first line is not one)
        return len(data) + len(base)

    def close(self, positions: Mapping[str, Mapping[str, int]]) -> None:
        """Compact what the journal holds (so the snapshot alone is complete, as an
        earlier version reads it) and close it."""
        if self._fd is not None and self._journal_bytes:
            self.compact(positions)
        self._drop_journal()

    def _drop_journal(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


_BASE = b"base "


def damaged(snapshot: Path, pipeline: str, exc: Exception) -> UnusablePathError:
    """The error of a snapshot that is not a positions snapshot (damaged on disk, edited
    by hand; a save never leaves one half written: it is renamed into place once whole
    and fsync'd). Starting without it would read every file of the pipeline again from
    its start, every row inserted twice: the start is refused (exit code 3), and the
    message says how to go on."""
    return UnusablePathError(
        f"the positions file {snapshot} of pipeline {pipeline!r} is damaged ({exc}): "
        "started without it, the daemon would read every file of the pipeline again from "
        "its start and insert its rows twice. Restore it from a backup; or, to read every "
        f"file of the pipeline again from its start, move it away (and its journal, "
        f"{snapshot.with_suffix('.journal').name}, which follows it)",
        path=str(snapshot),
        key="state_dir",
        expected="the positions snapshot chworkers wrote (a JSON object: {path: position})",
    )


def _base_line(snapshot: bytes) -> bytes:
    """The journal's first line: which snapshot its records follow."""
    return b"%s%08x %d\n" % (_BASE, zlib.crc32(snapshot), len(snapshot))


def _position(pos: Mapping[str, object]) -> Position:
    return {str(k): int(v) for k, v in pos.items()}  # type: ignore[call-overload]


def _changes(line: bytes) -> dict[str, Position | None] | None:
    """A journal record's changes; None when it is not whole or its checksum is wrong."""
    crc, _, payload = line.partition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(payload):
            return None
        data = json.loads(payload)
        return {str(p): None if pos is None else _position(pos) for p, pos in data.items()}
    except (ValueError, AttributeError, TypeError):
        return None
