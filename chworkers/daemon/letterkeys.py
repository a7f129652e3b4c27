"""The dead letters written once by key, across restarts: a small index beside them.

A broker's poison message is dead-lettered, then acknowledged. A restart between the two
(a crash, the broker down for the acknowledgement) delivers it again, and the source,
which remembers in memory only, wrote its dead letter a second time. So a letter written
with a key (the source, the message's id and a checksum of its payload) is written once:
:class:`LetterKeys` keeps the keys written in ``<dead-letter dir>/@letter-keys`` (JSON
lines), and a second write of the same key is skipped, in this run or the next.

Each keyed write is recorded there first, as an intent: the letter file, the offset it
is appended at, and its keys (fsync'd); then the letter lines, each carrying its key,
are appended (fsync'd). At start the intents are checked against the letter files:
the lines at that offset must hold those keys, or the write never reached the disk (a
crash in between, a failed write) and its keys do not count. Nothing is lost that way
(a letter whose write did not finish is written again) and nothing is written twice.
The index is rewritten with the verified keys at start and whenever it has grown by
:data:`KEPT` keys; only the last :data:`KEPT` keys are kept (the oldest forgotten).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from chworkers.daemon.batchfile import fsync_directory, write_all

__all__ = ["INDEX_NAME", "KEPT", "LetterKeys"]

log = logging.getLogger(__name__)

#: The index's file name in the dead-letter directory: no table's folder is named so
#: (their names keep letters, digits, "-", "_" and "." only).
INDEX_NAME = "@letter-keys"
#: Keys remembered (the last ones written): a poison message delivered again after more
#: than this many others were dead-lettered is dead-lettered again.
KEPT = 10_000


class LetterKeys:
    """The keys of the letters written under ``directory`` (see the module's docstring).
    Not thread-safe: :class:`~chworkers.daemon.deadletter.DeadLetters` calls it under its
    lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / INDEX_NAME
        self._keys: dict[str, None] = {}  # oldest first
        self._loaded = False
        self._appended = 0  # keys appended since the index was last rewritten
        self._stale = False  # the index read holds lines that a rewrite drops

    def __repr__(self) -> str:
        return f"<LetterKeys {self.path}: {len(self._keys)} keys, {self._appended} appended>"

    def written(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` whose letters are on disk already."""
        self.load()
        return {key for key in keys if key in self._keys}

    def intend(self, letter_file: Path, at: int, lines: int, keys: Sequence[str]) -> None:
        """Record, durably, that ``lines`` letters, those of ``keys`` among them, go into
        ``letter_file`` at offset ``at`` (before they are written)."""
        self.load()
        line = {
            "file": str(letter_file.relative_to(self.directory)),
            "at": at,
            "lines": lines,
            "keys": list(keys),
        }
        _append_durably(self.path, (json.dumps(line) + "\n").encode())
        self._appended += len(keys)

    def done(self, keys: Sequence[str]) -> None:
        """The letters of ``keys`` are on disk: remembered (the oldest forgotten)."""
        for key in keys:
            self._keys[key] = None
        while len(self._keys) > KEPT:
            del self._keys[next(iter(self._keys))]
        if self._appended > KEPT:
            self._rewrite()

    # -- the index file ---------------------------------------------------------------------

    def load(self) -> None:
        """Read the index, check its last writes against the letter files and rewrite it
        (once; the first call of the others does it too)."""
        self.read()
        self.compact()

    def read(self) -> None:
        """Read the index and check its last writes against the letter files (once)."""
        if self._loaded:
            return
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            text = b""
        unverified = 0
        for raw in text.splitlines():
            try:
                entry = json.loads(raw)
                keys = [str(k) for k in entry["keys"]]
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line: its letters' write had not begun
            if "file" in entry and not _on_disk(
                self.directory / str(entry["file"]), entry.get("at"), entry.get("lines"), keys
            ):
                unverified += len(keys)
                continue
            for key in keys:
                self._keys[key] = None
        while len(self._keys) > KEPT:
            del self._keys[next(iter(self._keys))]
        if unverified:
            log.info(
                "dead letters: %d keyed letter(s) whose write did not finish are not counted "
                "as written (%s)",
                unverified,
                self.path,
            )
        self._loaded = True
        self._stale = bool(text)

    def compact(self) -> None:
        """Rewrite the index read by :meth:`read` with its verified keys only, if it has
        lines to drop (once)."""
        if self._stale:
            self._rewrite()

    def _rewrite(self) -> None:
        """Replace the index by the verified keys, atomically."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = (json.dumps({"keys": list(self._keys)}) + "\n").encode() if self._keys else b""
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_directory(self.directory)
        self._appended = 0
        self._stale = False


def _on_disk(letter_file: Path, at: object, lines: object, keys: Sequence[str]) -> bool:
    """Whether the ``lines`` lines of ``letter_file`` from offset ``at`` are whole and
    hold the letters of ``keys``."""
    if not isinstance(at, int) or not isinstance(lines, int) or at < 0 or lines < len(keys):
        return False
    found: set[str] = set()
    try:
        with letter_file.open("rb") as fh:
            fh.seek(at)
            for _ in range(lines):
                line = fh.readline()
                if not line.endswith(b"\n"):
                    return False  # cut short: the write did not finish
                with contextlib.suppress(ValueError, AttributeError):
                    key = json.loads(line).get("key")
                    if isinstance(key, str):
                        found.add(key)
    except OSError:
        return False
    return found.issuperset(keys)


def _append_durably(path: Path, data: bytes) -> None:
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_directory(path.parent)
