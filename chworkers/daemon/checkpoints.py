"""Where the file sources are: each pipeline's read positions, saved durably.

A file source attaches its read position to every add; the position travels inside the
spooled batch and is committed here right after the batch is spooled, before it is
inserted (:meth:`Checkpoints.commit_batch`). After a crash the newer of the saved
position and the positions in the spooled batches wins (:meth:`Checkpoints.recover`),
so no record is read into the spool twice. A position names a file by its inode and a
checksum of its first bytes, so a rotated or recreated file is not mistaken for the old
one. A save that fails is retried every second and reported by :meth:`Checkpoints.problems`.
A save writes only what changed, to the pipeline's journal
(:mod:`~chworkers.daemon.positionsfile`: a snapshot and a journal of changes).

A file that is gone is forgotten (:meth:`Checkpoints.forget_gone`), so that a daemon
tailing rotated logs for months does not keep one position per file it ever read: once
its path has matched none of the source's patterns and not existed for ``forget_after``
seconds, and no file the source still sees has its inode. Nothing is re-read for it: a
file that is gone cannot be read, and one that appears later at its path is a new file
(another inode, or other first bytes), read from its start as it would be anyway.

A file whose path another file takes (a log rotated by rename: ``app.log`` is now
``app.log.1``, and a new ``app.log`` is read) keeps its position under a key of its own
(``app.log#moved:<dev>:<ino>``), where a restart finds it by its inode under its new
name; it is forgotten as any file gone, once no file the source sees has its inode.

A file the source's patterns no longer fit (its ``paths`` changed) is forgotten the same
way, ``forget_after`` after the source started without it, though it is still there:
the source will not read it again, and the snapshot carries its position at every
compaction. A pattern put back within that time finds the position; later, the file is a new one.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import threading
import time
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

from chworkers.daemon.batchfile import SpooledBatch
from chworkers.daemon.positionsfile import Position, PositionsFile
from chworkers.daemon.statepaths import writable_dir
from chworkers.wording import plural

__all__ = ["HEAD_BYTES", "Checkpoints", "Forgetting", "head_of", "same_head"]

log = logging.getLogger(__name__)


class Checkpoints:
    """Where each pipeline's file sources are, saved durably; offsets only grow."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        # Saves that cannot succeed would re-read files after every restart: refused
        # now (UnusablePathError, exit code 3), not one failed save at a time.
        writable_dir(self.directory, "positions directory")
        self._lock = threading.Lock()
        self._positions: dict[str, dict[str, Position]] = {}
        self._files: dict[str, PositionsFile] = {}
        self._unsaved: dict[str, str] = {}  # pipeline -> why its last save failed
        #: pipeline -> path -> when (time.monotonic()) its file was first seen gone.
        self._gone: dict[str, dict[str, float]] = {}

    def _loaded(self, pipeline: str) -> dict[str, Position]:
        """The pipeline's positions in memory, read from disk the first time (the lock
        held)."""
        if pipeline not in self._positions:
            self._files[pipeline] = PositionsFile(self.directory, pipeline)
            self._positions[pipeline] = self._files[pipeline].read()
        return self._positions[pipeline]

    def load(self, pipeline: str) -> dict[str, dict[str, int]]:
        """``{path: {"dev", "ino", "offset", ...}}`` for the pipeline (empty if none)."""
        with self._lock:
            return {p: dict(pos) for p, pos in self._loaded(pipeline).items()}

    def position(self, pipeline: str, path: str) -> dict[str, int] | None:
        """The position saved for one file of the pipeline (None if none)."""
        with self._lock:
            pos = self._loaded(pipeline).get(path)
            return None if pos is None else dict(pos)

    def commit(self, pipeline: str, files: Mapping[str, Mapping[str, int]]) -> None:
        """Merge positions (a later offset on the same inode wins) and save durably: what
        changed is appended to the pipeline's journal (:mod:`~chworkers.daemon.positionsfile`)."""
        with self._lock:
            current = self._loaded(pipeline)
            changes: dict[str, Position | None] = {}
            for path, pos in files.items():
                old = current.get(path)
                if old is not None and not _same_file(old, pos):
                    # Another file took the path (rotation by rename: app.log is now
                    # app.log.1). The old one keeps its position under a key of its
                    # own, found by its inode at a restart, forgotten once gone.
                    aside = _aside_key(path, old)
                    kept = current.get(aside)
                    if kept is None or old["offset"] > kept["offset"]:
                        current[aside] = changes[aside] = old
                    old = None
                if old is None or pos["offset"] > old["offset"]:
                    current[path] = changes[path] = dict(pos)
            if not changes and pipeline not in self._unsaved:
                return
            # Saved even when nothing changed if the last save failed: the positions in
            # memory are ahead of the file, and a restart would read those rows again
            # (a save after a failed one writes them all).
            self._save_locked(pipeline, changes)

    def forget_gone(
        self,
        pipeline: str,
        present: Collection[str],
        idents: Mapping[tuple[int, int], str],
        *,
        after: float,
        now: float | None = None,
        patterns: Sequence[str] = (),
    ) -> list[str]:
        """Forget (and save without) the positions of files gone for ``after`` seconds:
        their path is not in ``present`` (what the source's patterns match now) and does
        not exist (ENOENT: a directory that cannot be read is not "gone"), or no longer
        fits any of ``patterns`` (when given: the source's ``paths`` changed), and the
        file ``idents`` (the ``(dev, ino)`` of the files the source sees -> a path of
        each) has at their inode, if any, is another file (the inode reused): a file
        renamed to a name the patterns match is still the source's. Returns the paths
        forgotten."""
        saved = self.load(pipeline)  # a copy: files are looked at without the lock
        now = time.monotonic() if now is None else now
        missing = set()
        for path, pos in saved.items():
            if path in present:
                continue
            if not _missing(path) and (not patterns or _fits(path, patterns)):
                continue
            at = idents.get((pos["dev"], pos["ino"]))
            if at is None or not _is_at(at, pos):
                missing.add(path)
        with self._lock:
            # Gone since when: a path back (or a file at it again) starts over.
            gone = self._gone[pipeline] = {
                path: self._gone.get(pipeline, {}).get(path, now) for path in missing
            }
            due = sorted(path for path, since in gone.items() if now - since >= after)
            if not due:
                return []
            current = self._positions[pipeline]
            for path in due:
                del gone[path]
                current.pop(path, None)
            try:
                self._save_locked(pipeline, dict.fromkeys(due))
            except OSError as exc:  # save_unsaved tries again; problems() says so
                log.warning("could not save the positions of pipeline %s: %s", pipeline, exc)
        log.info(
            "source %s: forgot the positions of %s gone, or no longer in its paths, for "
            "%g s or more (first: %s)",
            pipeline,
            plural(len(due), "file"),
            after,
            due[0],
        )
        return due

    def _save_locked(self, pipeline: str, changes: Mapping[str, Position | None]) -> None:
        """Make the pipeline's changed positions durable (the lock held)."""
        file = self._files[pipeline]
        try:
            file.save(changes, self._positions[pipeline])
        except OSError as exc:
            self._unsaved[pipeline] = f"cannot save {file.snapshot}: {exc.strerror or exc}"
            raise
        if self._unsaved.pop(pipeline, None) is not None:
            log.info("positions of pipeline %s are saved again", pipeline)

    def save_unsaved(self) -> None:
        """Try again to save positions whose last save failed (the daemon's loop calls
        this every second, so that a pipeline with no new batches is saved too)."""
        with self._lock:
            pipelines = list(self._unsaved)
        for pipeline in pipelines:
            with contextlib.suppress(OSError):  # still failing: problems() says so
                self.commit(pipeline, {})

    def close(self) -> None:
        """Compact each pipeline's journal into its snapshot (the daemon stops: the
        snapshot alone then holds every position) and close the journals."""
        with self._lock:
            for pipeline, file in self._files.items():
                try:
                    file.close(self._positions[pipeline])
                except OSError as exc:  # the journal still holds them: nothing is lost
                    log.warning("could not compact the positions of %s: %s", pipeline, exc)

    def problems(self) -> list[str]:
        """Pipelines whose latest positions could not be saved (empty when all are)."""
        with self._lock:
            return [
                f"positions of pipeline {pipeline} not saved: {why}"
                for pipeline, why in sorted(self._unsaved.items())
            ]

    def commit_batch(self, batch: SpooledBatch) -> None:
        """Record the file positions a spooled batch carries (no-op for other sources)."""
        files = batch.meta.get("files")
        if files:
            self.commit(batch.pipeline, files)

    def recover(self, batches: Iterable[SpooledBatch]) -> None:
        """After a crash: positions in spooled batches may be newer than the saved ones."""
        for batch in batches:
            self.commit_batch(batch)


class Forgetting:
    """A file source's call to :meth:`Checkpoints.forget_gone`, at a bounded rate (every
    quarter of ``after``, between ``poll_interval`` and a minute); ``after`` 0: never."""

    def __init__(
        self,
        checkpoints: Checkpoints,
        pipeline: str,
        after: float,
        poll_interval: float,
        patterns: Sequence[str] = (),
    ) -> None:
        self.checkpoints = checkpoints
        self.pipeline = pipeline
        self.patterns = tuple(patterns)
        self.after = after
        self.interval = min(60.0, max(poll_interval, after / 4))
        self._next = 0.0

    def due(self) -> bool:
        """Whether a check is due now (a source that must stat its files for it asks)."""
        return self.after > 0 and time.monotonic() >= self._next

    def check(self, present: Collection[str], idents: Mapping[tuple[int, int], str]) -> list[str]:
        """Forget the positions of files gone for ``after`` seconds, when a check is due;
        the paths forgotten."""
        if not self.due():
            return []
        self._next = time.monotonic() + self.interval
        return self.checkpoints.forget_gone(
            self.pipeline, present, idents, after=self.after, patterns=self.patterns
        )


#: A file is fingerprinted by a checksum of its first bytes, up to this many.
HEAD_BYTES = 256


def head_of(fd: int, length: int = HEAD_BYTES) -> tuple[int, int]:
    """(crc32, length) of a file's first ``length`` bytes (fewer if it is shorter)."""
    data = os.pread(fd, length, 0)
    return zlib.crc32(data), len(data)


def same_head(fd: int, head: int, head_len: int, size: int) -> bool:
    """Does the open file start as the one fingerprinted did? An inode number can be
    reused by a new file once the old one is deleted; its first bytes tell them apart."""
    if head_len == 0:
        return size == 0
    crc, got = head_of(fd, head_len)
    return got == head_len and crc == head


def _is_at(path: str, pos: Mapping[str, int]) -> bool:
    """Whether the file at ``path`` is the one ``pos`` was saved for (its inode, and its
    first bytes where the position has them); False when it cannot be opened."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if (st.st_dev, st.st_ino) != (pos["dev"], pos["ino"]):
                return False
            if "head_len" not in pos:
                return True
            return same_head(fh.fileno(), pos["head"], pos["head_len"], st.st_size)
    except OSError:
        return False


def _aside_key(path: str, pos: Mapping[str, int]) -> str:
    """The key a file's position is kept under once another file took its path: no
    file is at it (:meth:`Checkpoints.forget_gone` forgets it once no file the source
    sees has its inode); a source finds it by the inode (``_saved_offset``)."""
    return f"{path}#moved:{pos['dev']}:{pos['ino']}"


def _fits(path: str, patterns: Sequence[str]) -> bool:
    """Whether a pattern could match ``path`` (fnmatch's ``*`` also matches ``/``: a
    path is taken for matched rather than forgotten when in doubt)."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _missing(path: str) -> bool:
    """Whether nothing exists at ``path`` (ENOENT; not a failure to look, EACCES, EIO)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _same_file(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    """Do two saved positions name the same file? The same inode, and the same first
    bytes where both fingerprinted as many (an inode number is reused after a delete)."""
    if (a["dev"], a["ino"]) != (b["dev"], b["ino"]):
        return False
    if a.get("head_len") is not None and a.get("head_len") == b.get("head_len"):
        return a.get("head") == b.get("head")
    return True
