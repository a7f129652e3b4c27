"""The file source for whole columnar files: Parquet, Arrow IPC (file and stream), Native.

Each matching file is read once it is complete, cut into chunks on its own boundaries
(:mod:`chworkers.daemon.filechunks`: row groups, record batches; a Native file whole),
and each chunk goes through the same path as every other batch: the batcher spools it
as a batch of its own (``INSERT ... FORMAT Parquet`` of exactly those rows), the
dispatcher sends it, and it leaves the spool once ClickHouse has it.

Exactly once: a chunk's deduplication token is made from the file's content identity
and the rows it covers (:func:`~chworkers.daemon.filechunks.chunk_token`), and the
file's progress (rows spooled, always on a unit boundary) rides in the batch's
``meta["files"]`` like a line file's offset, committed to the
:class:`~chworkers.daemon.checkpoints.Checkpoints` once the batch is spooled. After a
kill the source resumes at the saved row; a chunk spooled but not yet saved is cut
again identically, and ClickHouse drops the duplicate by its token.

Complete files only: a file is read once its size and modification time have not
changed for ``settle`` seconds; files whose names start with ``.`` are skipped (write
``.name.parquet`` and rename it into place). A file that cannot be read (corrupt,
truncated, of another format) goes to the dead letters with the error, the rows
before the unreadable chunk stay inserted, and the source goes on with other files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from chworkers.daemon.checkpoints import Checkpoints, Forgetting
from chworkers.daemon.checkpoints import head_of as _head
from chworkers.daemon.checkpoints import same_head as _same_head
from chworkers.daemon.filechunks import (
    Chunk,
    FileLayout,
    chunk_token,
    file_identity,
    layout,
    plan,
    read_chunk,
)
from chworkers.daemon.sources import _Source, warn_if_nothing_matches
from chworkers.errors import ColumnarFileError
from chworkers.wording import plural

__all__ = ["BadFile", "ColumnarFileSource"]

log = logging.getLogger(__name__)

#: The progress saved for a file that cannot be read at all: nothing more to read.
UNREADABLE = 1 << 62

#: ``bad_file(pipeline, table, error)``: dead-letter (a part of) a file that cannot be
#: read; the error names the file and its rows at fault.
BadFile = Callable[[str, str, ColumnarFileError], None]


@dataclasses.dataclass(frozen=True)
class _Seen:
    size: int
    mtime: int
    since: float  # time.monotonic() when this size and mtime were first seen


class ColumnarFileSource(_Source):
    """Reads complete Parquet, Arrow or Native files matching glob patterns."""

    framed = False

    def __init__(
        self,
        paths: Iterable[str],
        *,
        checkpoints: Checkpoints,
        follow: bool = False,
        poll_interval: float = 0.25,
        forget_after: float = 3600.0,
        settle: float = 1.0,
        bad_file: BadFile | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.patterns = tuple(paths)
        self.checkpoints = checkpoints
        checkpoints.load(self.name)  # at start: a positions file it cannot use stops it
        self.follow = follow
        self.poll_interval = poll_interval
        self.forgetting = Forgetting(
            checkpoints, self.name, forget_after, poll_interval, self.patterns
        )
        self.settle = settle
        self.bad_file = bad_file
        self.files = 0  # files read to their end (or dead-lettered)
        self._seen: dict[str, _Seen] = {}
        self._done: dict[str, tuple[int, int, int]] = {}  # path -> (dev, ino, size)

    def run(self, stop: threading.Event) -> None:
        warn_if_nothing_matches(self.name, self.patterns, self.follow)
        while not stop.is_set():
            waiting = False
            for path in self._candidates():
                if stop.is_set():
                    return
                state = self._settled(path)
                if state is None:
                    waiting = waiting or not self._is_done(path)
                    continue
                self._read_file(path, state, stop)
            if not self.follow and not waiting:
                return
            stop.wait(self.poll_interval)

    def _candidates(self) -> list[str]:
        found: set[str] = set()
        for pattern in self.patterns:
            for path in glob.glob(pattern):
                if not os.path.basename(path).startswith(".") and os.path.isfile(path):
                    found.add(path)
        self._seen = {p: s for p, s in self._seen.items() if p in found}
        self._done = {p: d for p, d in self._done.items() if p in found}
        if self.forgetting.due():  # files gone for long: their positions go too
            idents: dict[tuple[int, int], str] = {}
            for path in found:
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    idents[(st.st_dev, st.st_ino)] = path
            self.forgetting.check(found, idents)
        return sorted(found)

    def _is_done(self, path: str) -> bool:
        """Whether ``path`` is the very file this run read to its end (or gave up on)."""
        try:
            st = os.stat(path)
        except OSError:
            return True  # gone: nothing to wait for
        return self._done.get(path) == (st.st_dev, st.st_ino, st.st_size)

    def _settled(self, path: str) -> os.stat_result | None:
        """The file's stat once it has not changed for ``settle`` seconds (else None;
        also None for a file already read)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        if self._done.get(path) == (st.st_dev, st.st_ino, st.st_size):
            return None
        now = time.monotonic()
        seen = self._seen.get(path)
        if seen is None or (seen.size, seen.mtime) != (st.st_size, st.st_mtime_ns):
            self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now)
            return st if self.settle <= 0 else None
        # Settled, even when empty: an empty file is not a readable one (dead-lettered),
        # and a run over files that are not followed must come to an end.
        return st if now - seen.since >= self.settle else None

    def _read_file(self, path: str, st: os.stat_result, stop: threading.Event) -> None:
        try:
            fh = open(path, "rb")  # noqa: SIM115 (closed below; the fd fingerprints it)
        except OSError as exc:
            # Not read in this run (nothing saved: the next start tries it again, or a
            # change of its size), not at every poll.
            self._error(f"cannot open {path}: {exc.strerror}; skipped until the next start")
            self._done[path] = (st.st_dev, st.st_ino, st.st_size)
            return
        with fh:
            st = os.fstat(fh.fileno())
            head, head_len = _head(fh.fileno())
            position = {
                "dev": st.st_dev,
                "ino": st.st_ino,
                "offset": 0,
                "head": head,
                "head_len": head_len,
                "size": st.st_size,
            }
            start = self._saved_rows(path, position, fh.fileno())
            try:
                file = layout(path, self.format)
                identity = file_identity(path)
            except (ColumnarFileError, OSError) as exc:
                self._unreadable(path, position, _as_file_error(exc, path, "all"))
                return
            if start >= file.rows:
                self._finished(path, position)
                return
            log.info(
                "source %s: reading %s (%s) from row %d",
                self.name,
                path,
                plural(file.rows, "row"),
                start,
            )
            limits = self.limits or self.batcher.limits
            for chunk in plan(
                file, start_row=start, max_rows=limits.max_rows, max_bytes=limits.max_bytes
            ):
                if stop.is_set():
                    return
                too_large = self._never_fits(path, file, chunk)
                if too_large is not None:
                    self._dead_letter(too_large)
                    self._commit(path, position, chunk.end_row)
                    continue
                try:
                    payload = read_chunk(path, self.format, chunk)
                except (ColumnarFileError, OSError) as exc:
                    rows = f"{chunk.first_row}-{chunk.end_row}"
                    self._dead_letter(_as_file_error(exc, path, rows))
                    self._commit(path, position, chunk.end_row)
                    continue
                meta = {"files": {path: {**position, "offset": chunk.end_row}}}
                self.batcher.add(
                    self.table,
                    payload,
                    chunk.rows,
                    format=self.format,
                    pipeline=self.name,
                    settings=self.settings,
                    meta=meta,
                    limits=self.limits,
                    retry=True,  # waits until the spool takes it: progress never passes it
                    token=chunk_token(self.table, identity, chunk),
                )
                self.rows += chunk.rows
            self._finished(path, position)

    def _never_fits(self, path: str, file: FileLayout, chunk: Chunk) -> ColumnarFileError | None:
        """The error for a chunk larger than the spool can ever hold (its ``max_bytes``,
        or its whole filesystem), before it is read into memory: it would wait for room
        forever, and the pipeline behind it."""
        size = file.size if chunk.whole else sum(file.units[i][1] for i in chunk.units)
        limit, what = self.batcher.spool.capacity()
        if size <= limit:
            return None
        how = (
            "split the file"
            if not file.units
            else f"write it with smaller {'row groups' if self.format == 'Parquet' else 'record batches'}"
        )
        return ColumnarFileError(
            f"{size:,} bytes in one piece, more than the spool can ever hold ({what}: "
            f"{limit:,} bytes); {how}",
            path=path,
            rows=f"{chunk.first_row}-{chunk.end_row}",
        )

    def _saved_rows(self, path: str, position: Mapping[str, int], fd: int) -> int:
        """Rows of this very file already spooled (0 for a new or another file)."""
        saved = self.checkpoints.position(self.name, path)
        if (
            saved
            and (saved["dev"], saved["ino"]) == (position["dev"], position["ino"])
            and saved.get("size") == position["size"]
            and _same_head(fd, saved["head"], saved["head_len"], position["size"])
        ):
            return saved["offset"]
        return 0

    def _unreadable(self, path: str, position: Mapping[str, int], error: ColumnarFileError) -> None:
        self._dead_letter(error)
        self._commit(path, position, UNREADABLE)
        self._finished(path, position)

    def _dead_letter(self, error: ColumnarFileError) -> None:
        self._error(f"{error.path}: rows {error.rows}: {error}")
        if self.bad_file is not None:
            self.bad_file(self.name, self.table, error)

    def _commit(self, path: str, position: Mapping[str, int], rows: int) -> None:
        """Save progress past rows that were dead-lettered (spooled rows are saved with
        their batch)."""
        try:
            self.checkpoints.commit(self.name, {path: {**position, "offset": rows}})
        except OSError as exc:  # retried by the daemon's loop; problems() reports it
            log.error("source %s: cannot save the position of %s: %s", self.name, path, exc)

    def _finished(self, path: str, position: Mapping[str, int]) -> None:
        self._done[path] = (position["dev"], position["ino"], position["size"])
        self.files += 1


def _as_file_error(exc: BaseException, path: str, rows: str) -> ColumnarFileError:
    if isinstance(exc, ColumnarFileError):
        exc.path = exc.path or path
        exc.rows = exc.rows or rows
        return exc
    why = getattr(exc, "strerror", None) or str(exc)
    error = ColumnarFileError(f"cannot read {path}: {why}", path=path, rows=rows)
    error.__cause__ = exc
    return error
