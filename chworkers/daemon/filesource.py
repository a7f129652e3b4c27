"""The file source: reads files matching glob patterns, once or tailing them (``follow``).

File sources attach their read position to every add; the position travels inside the
spooled batch and is committed to the :class:`~chworkers.daemon.checkpoints.Checkpoints`
store right after the batch is spooled, before it is inserted. After a crash, the newer
of the saved checkpoint and the positions in the spooled batches wins, so no record is
read into the spool twice. When the spool cannot take a batch (full, disk full), the
source waits until it does (the batcher retries): its position never passes records
that are not in the spool.

``follow`` mode tails growing files like ``tail -F``: it notices rotation (the path now
names another inode: the old file is finished, the new one read from its start; a file
renamed to a name the patterns match is followed there, not read again) and truncation
(``copytruncate``: the file shrank below our offset: read again from 0). At most
``max_open_files`` are open at once: the others are closed and reopened by path and
identity when they grow (:mod:`chworkers.daemon.tailing`).
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from chworkers.daemon.checkpoints import HEAD_BYTES, Checkpoints, Forgetting
from chworkers.daemon.checkpoints import head_of as _head
from chworkers.daemon.checkpoints import same_head as _same_head
from chworkers.daemon.closedfiles import Change, Finished, Parked, change_of
from chworkers.daemon.extents import Extent, make_durable
from chworkers.daemon.framing import Framer, read_header
from chworkers.daemon.sources import _Source, warn_if_nothing_matches
from chworkers.daemon.spoollinks import SpoolLinks
from chworkers.daemon.tailing import OpenFile, Tailing
from chworkers.daemon.tailingwatch import FileWatch
from chworkers.ops.daemonmetrics import DaemonMetrics

__all__ = ["REFERENCE_MIN_BYTES", "FileSource"]

#: A file with less than this left to read is copied even by reference: per file, a
#: reference costs an fsync of the file and a hard link (3-7 ms on the benchmark
#: machine, benchmarks/bench_spool_refs.py), more than copying so few bytes.
REFERENCE_MIN_BYTES = 256 * 1024

#: Most files a one-shot source holds open at once; the others matched wait their turn,
#: in order (a backfill of many thousand files must not run out of descriptors). A
#: followed source holds up to its ``max_open_files``.
MAX_OPEN_FILES = 32

#: How long a finished file no matched path names is remembered, in seconds: one renamed
#: along a chain of matched names (logrotate) is at none of them for a moment, between
#: the listing of the paths and their stat, and is not gone.
FINISHED_GRACE = 10.0

#: The sources' logger, as before they were cut into modules (log filters keep working).
log = logging.getLogger("chworkers.daemon.sources")


class FileSource(_Source, Tailing):
    """Reads files matching glob patterns; with ``follow``, keeps tailing them."""

    def __init__(
        self,
        paths: Iterable[str],
        *,
        checkpoints: Checkpoints,
        follow: bool = False,
        poll_interval: float = 0.25,
        forget_after: float = 3600.0,
        by_reference: bool = False,
        max_open_files: int = 256,
        close_idle_after: float = 300.0,
        metrics: DaemonMetrics | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.patterns = tuple(paths)
        self.checkpoints = checkpoints
        self.follow = follow
        #: Spool batches as references to the file's bytes (:mod:`chworkers.daemon.extents`):
        #: only for files read once; a followed file may be truncated or rotated away.
        #: Each file is linked into the spool first (:mod:`chworkers.daemon.spoollinks`);
        #: one that cannot be is copied.
        self.by_reference = by_reference and not follow
        self.links: SpoolLinks | None = self.batcher.spool.links if self.by_reference else None
        self.poll_interval = poll_interval
        self.forgetting = Forgetting(
            checkpoints, self.name, forget_after, poll_interval, self.patterns
        )
        self.max_open_files = max_open_files if follow else min(MAX_OPEN_FILES, max_open_files)
        self.close_idle_after = close_idle_after
        #: Its files open and closed (chworkers_source_files), set at each poll.
        self._files_gauges = (
            None
            if metrics is None
            else (
                metrics.source_files.labels(source=self.name, state="open"),
                metrics.source_files.labels(source=self.name, state="closed"),
            )
        )
        #: chworkers_source_reopens_total: parked files reopened (None: not counted).
        self._reopens = None if metrics is None else metrics.source_reopens.labels(self.name)
        self._open: dict[str, OpenFile] = {}
        #: Followed files closed for a descriptor, by path (:mod:`chworkers.daemon.tailing`).
        self._parked: dict[str, Parked] = {}
        #: Files waiting for a descriptor, in order: matched and not opened yet, or parked
        #: and grown (at most ``max_open_files`` are open).
        self._pending: deque[str] = deque()
        self._queued: set[str] = set()  # the paths in _pending
        #: The positions at start by file identity (None: to be indexed again).
        self._by_ident: dict[tuple[int, int], list[tuple[str, dict[str, int]]]] | None = None
        self._saved: dict[str, dict[str, int]] = {}  # the positions at start, less forgotten
        #: Files read to the end, by (dev, ino): their fingerprint, and where they ended.
        self._finished: dict[tuple[int, int], Finished] = {}
        #: The finished files that no matched path named at the last match: since when.
        self._unseen: dict[tuple[int, int], float] = {}
        self._stop = threading.Event()
        #: Followed: what changed since the last poll (:mod:`~chworkers.daemon.tailingwatch`;
        #: None: every poll matches the patterns again), made by :meth:`run`.
        self._watch: FileWatch | None = None
        #: The open files a poll found written to, or opened (None: all of them).
        self._reading: set[str] | None = None
        #: The open files whose last read brought data: read again at the next poll, to
        #: look at their path at their end (rotated, truncated), events or not.
        self._unsettled: set[str] = set()
        #: Files closed with what was written to them unread: looked at at the next poll.
        self._recheck: set[str] = set()
        #: The followed paths that are symbolic links, at the last full poll.
        self._links: list[str] = []
        # Read now, as the daemon starts: a positions file that cannot be used stops the
        # start (exit code 3), not this source's thread once the daemon runs.
        checkpoints.load(self.name)

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        self._saved = self.checkpoints.load(self.name)
        warn_if_nothing_matches(self.name, self.patterns, self.follow)
        if self.follow:
            self._watch = FileWatch(self.name, self.patterns)
        try:
            self._poll(stop)
        finally:
            if self._watch is not None:
                self._watch.close()
                self._watch = None

    def _poll(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._discover()
            progressed = self._read_open()
            while self.follow and self._pending and not stop.is_set():
                # More files want reading than may be open: round after round, the
                # files read close for the next ones, before the patterns are matched again.
                self._make_room()
                self._open_pending(self._identities())
                progressed |= self._read_open()
            if not self.follow and not self._open and not self._pending:
                self._count_files()  # none left
                return
            if not progressed:
                stop.wait(self.poll_interval)
        for f in list(self._open.values()):
            self._release(f)
            f.fh.close()

    def _read_open(self) -> bool:
        """Read each open file to its end (after a quiet poll, those written to or
        opened); True if data came."""
        progressed = False
        reading, self._reading = self._reading, None
        for path in list(self._open):
            if self._stop.is_set():
                break
            if reading is not None and path not in reading and path not in self._unsettled:
                continue
            if self._read(self._open[path]):
                progressed = True
                self._unsettled.add(path)
            else:
                self._unsettled.discard(path)
        self._unsettled.intersection_update(self._open)  # (closed since)
        return progressed

    def _identities(self) -> dict[tuple[int, int], str]:
        """The files open or parked, by (dev, ino): the path of each."""
        seen = {(f.dev, f.ino): f.path for f in self._open.values()}
        seen.update({(p.dev, p.ino): p.path for p in self._parked.values()})
        return seen

    def _discover(self) -> None:
        """Match the patterns again and open the files found (one-shot: those waiting
        their turn first, without matching again, up to :data:`MAX_OPEN_FILES` open;
        followed: parked files that grew too, closing others to make room)."""
        if not self.follow and self._pending:
            self._open_pending({})
            return
        if self._watch is not None:
            changes = self._watch.changes()
            if not changes.full and not self.forgetting.due():
                self._look_at(changes.written)
                return
        self._reading = None
        self._recheck.clear()  # every closed file is looked at
        # The files the patterns match, by (dev, ino): a path of each.
        matched: set[str] = set(self._open) | set(self._parked)
        found = [path for pattern in self.patterns for path in sorted(glob.glob(pattern))]
        stats = self._moved_along(found) if self.follow else {}  # before names are taken
        seen = self._identities()
        fresh = []
        for path in dict.fromkeys(found):  # (a path two patterns match: once)
            if path not in self._open and path not in self._parked and path not in self._queued:
                fresh.append(path)
            matched.add(path)
        if self.follow:
            fresh = self._renamed(fresh, seen)
        for path in fresh:
            self._queue(path)
        if self.follow:
            self._tend(stats)
        self._open_pending(seen)
        for path in self._pending:  # waiting their turn: there all the same
            if path in self._parked:
                continue  # in seen already
            try:
                st = os.stat(path)
            except OSError:
                continue
            seen[(st.st_dev, st.st_ino)] = path
        self._forget_finished(seen)
        forgotten = self.forgetting.check(matched, seen)
        for path in forgotten:
            self._saved.pop(path, None)
            self._by_ident = None
        if self._watch is not None:
            self._watch.watched(self._links)
        self._count_files()

    def _look_at(self, written: set[str]) -> None:
        """A quiet poll: only files were written to since the last one (no name the
        patterns may match came or went). The followed files written to alone are looked
        at: an open one is read, a closed one reopened if it grew; a matched file not
        followed (finished, or that could not be opened) makes the next poll a full one."""
        assert self._watch is not None
        reading = set()
        written |= self._recheck
        self._recheck.clear()
        for path in written:
            if path in self._open:
                reading.add(path)
            elif path in self._parked:
                if path not in self._queued:
                    change = change_of(self._parked[path])
                    if change is Change.GREW:
                        self._queue(path)
                    elif change is Change.ELSEWHERE:
                        self._watch.again()  # its rename's event comes next
            elif path not in self._queued and self._watch.may_match(path):
                self._watch.again()
        self._make_room()
        if self._pending:
            before = set(self._open)
            self._open_pending(self._identities())
            reading.update(path for path in self._open if path not in before)
        self._reading = reading
        self._count_files()

    def _forget_finished(self, seen: dict[tuple[int, int], str]) -> None:
        """Forget the finished files that are gone (a file that reuses the inode later is
        new): those no matched path has named for :data:`FINISHED_GRACE`. Forgotten at
        once, a file renamed to a matched name while the paths were looked at (its old
        name listed, its new one not yet) was read again from its start at the next
        match: every line of it twice."""
        now = time.monotonic()
        for ident in list(self._finished):
            if ident in seen:
                self._unseen.pop(ident, None)
            elif now - self._unseen.setdefault(ident, now) >= FINISHED_GRACE:
                del self._finished[ident]
                del self._unseen[ident]

    def _count_files(self) -> None:
        """chworkers_source_files: the files open, and those closed (parked, or matched
        and waiting for a descriptor)."""
        if self._files_gauges is not None:
            waiting = sum(1 for path in self._pending if path not in self._parked)
            self._files_gauges[0].set(len(self._open))
            self._files_gauges[1].set(len(self._parked) + waiting)

    def _open_pending(self, seen: dict[tuple[int, int], str]) -> None:
        """Open the files waiting, in order, while there is room (``seen``: their
        identities are added to it)."""
        while self._pending and len(self._open) < self.max_open_files:
            path = self._pending.popleft()
            self._queued.discard(path)
            if path in self._open:
                continue
            parked = self._parked.pop(path, None)
            if parked is not None:
                self._unpark(parked)
                continue
            try:
                fh = open(path, "rb")  # noqa: SIM115 (kept open while tailing)
            except OSError as exc:
                if self.follow and isinstance(exc, FileNotFoundError):
                    # Gone since it was matched (logrotate's passing .N+1): no error.
                    log.info("source %s: %s is gone before its turn to be read", self.name, path)
                    continue
                self._error(f"cannot open {path}: {exc.strerror}")
                continue
            st = os.fstat(fh.fileno())
            ident = (st.st_dev, st.st_ino)
            if seen.get(ident, path) != path:
                fh.close()  # followed already under another name
                continue
            seen[ident] = path
            finished = self._finished.get(ident)
            resume = None
            if finished is not None:
                same = _same_head(fh.fileno(), finished.head, finished.head_len, st.st_size)
                if same and (st.st_size <= finished.end or not self.follow):
                    fh.close()
                    continue
                del self._finished[ident]
                self._unseen.pop(ident, None)
                if same:
                    # Written to after it was finished, at a name the patterns match (its
                    # writer went on after a rename): read on from where it ended.
                    resume = finished.end
                    log.info("source %s: %s grew after it was finished", self.name, path)
                else:
                    # A new file got the inode of one read before (deleted meanwhile).
                    self._saved.pop(path, None)
            if resume is not None:
                offset = resume
            else:
                offset = self._saved_offset(path, ident, fh.fileno(), st.st_size)
            fh.seek(offset)
            head, head_len = _head(fh.fileno())
            link = None
            if self.links is not None and st.st_size - offset >= REFERENCE_MIN_BYTES:
                link = self.links.pin(fh.fileno(), path, source=self.name)
            self._open[path] = OpenFile(
                path,
                fh,
                st.st_dev,
                st.st_ino,
                offset,
                Framer(
                    self.format,
                    max_record_bytes=self.max_record_bytes,
                    # Resuming past a *WithNames header: its batches still need it.
                    header=read_header(fh, self.format) if offset else b"",
                    on_skip=functools.partial(self._skipped, path),
                ),
                head,
                head_len,
                link=link,
                grew_at=time.monotonic(),
            )
            log.info("source %s: reading %s from offset %d", self.name, path, offset)

    def _saved_offset(self, path: str, ident: tuple[int, int], fd: int, size: int) -> int:
        """Where to resume the file at ``path``: its saved position, when it is that very
        file (the same inode and first bytes); or the position saved for it under another
        path (a file rotated to a name the patterns match, read before under its old
        name); else its start."""
        if self._by_ident is None:
            self._by_ident = {}
            for saved_path, saved in self._saved.items():
                key = (saved["dev"], saved["ino"])
                self._by_ident.setdefault(key, []).append((saved_path, saved))
        candidates: list[dict[str, int] | None] = [self._saved.get(path)]
        candidates += [
            pos for p, pos in self._by_ident.get(ident, ()) if p != path and "head_len" in pos
        ]
        for pos in candidates:
            if (
                pos
                and (pos["dev"], pos["ino"]) == ident
                and pos["offset"] <= size
                and ("head_len" not in pos or _same_head(fd, pos["head"], pos["head_len"], size))
            ):
                return pos["offset"]
        return 0

    def _read(self, f: OpenFile) -> bool:
        """Read what is there; at the end, finish, rotate or wait. True if data came."""
        progressed = False
        while not self._stop.is_set():
            chunk = f.fh.read(self.read_size)
            if not chunk:
                f.at_end = True
                break
            if f.at_end and self.follow and self._rewritten(f):
                continue  # read again from its start
            f.at_end = False
            progressed = True
            f.grew_at = time.monotonic()
            f.offset += len(chunk)
            records, rows = f.framer.feed(chunk)
            # Where the records start in the file: before what the framer holds, and
            # before the start of a record too long that it dropped.
            start = f.offset - f.framer.pending_bytes - f.framer.dropped_bytes - len(records)
            self.last_ticket = None
            self._add(
                records,
                rows,
                self._meta(f, start + len(records)),
                header=f.framer.header,
                position=functools.partial(self._meta_from, f, start),
                locate=functools.partial(self._extent, f, start) if f.link else None,
            )
            f.last = self.last_ticket or f.last
        if self._stop.is_set() or (progressed and self.follow):
            return progressed  # stopped mid-file: the unfinished record is not a record
        if not self.follow:
            self._close(f, finished=True)
            return progressed
        try:
            st = os.stat(f.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != (f.dev, f.ino):
            log.info("source %s: %s was rotated; finishing the old file", self.name, f.path)
            self._close(f, finished=True)
            self._again()  # the new file at its path: opened at the next poll
        elif st.st_size < f.offset:
            log.info("source %s: %s was truncated; reading it from the start", self.name, f.path)
            self._restart(f)
            f.fh.seek(0)
            self._again()  # read at the next poll, from its start
        return progressed

    def _close(self, f: OpenFile, *, finished: bool) -> None:
        records, rows = f.framer.finish()
        self.last_ticket = None
        self._add(records, rows, self._meta(f, f.offset), header=f.framer.header)
        f.last = self.last_ticket or f.last
        if finished:
            self._finished[(f.dev, f.ino)] = Finished(
                *_head(f.fh.fileno()), f.offset, os.fstat(f.fh.fileno()).st_mtime_ns
            )
            self._unseen.pop((f.dev, f.ino), None)
        self._release(f)
        f.fh.close()
        del self._open[f.path]

    def _release(self, f: OpenFile) -> None:
        """Done with the file: its link goes once the records added from it are spooled
        (and then as soon as no batch references it)."""
        if f.link is not None and self.links is not None:
            self.links.release(f.link, None if f.last is None else f.last.done)
            f.link = None

    def _extent(self, f: OpenFile, start: int, begin: int, end: int) -> Extent | None:
        """Where ``records[begin:end]`` are in the file (``records`` starting at
        ``start``), once the file's bytes up to there are durable (None: they cannot be
        made so, and the records are spooled as a copy)."""
        if f.synced < 0:
            return None
        if start + end > f.synced:
            size = os.fstat(f.fh.fileno()).st_size
            if not make_durable(f.fh.fileno()):
                log.info(
                    "source %s: %s cannot be fsync'd; its batches are spooled as copies",
                    self.name,
                    f.path,
                )
                f.synced = -1
            else:
                f.synced = size
        if f.synced < start + end or f.link is None:
            return None
        return Extent(
            f.link, f.dev, f.ino, f.head, f.head_len, start + begin, start + end, source=f.path
        )

    def _meta_from(self, f: OpenFile, start: int, at: int) -> dict[str, Any]:
        return self._meta(f, start + at)

    def _meta(self, f: OpenFile, offset: int) -> dict[str, Any]:
        if f.head_len < HEAD_BYTES and offset > f.head_len:
            f.head, f.head_len = _head(f.fh.fileno())  # the file grew: a longer fingerprint
        position = {
            "dev": f.dev,
            "ino": f.ino,
            "offset": offset,
            "head": f.head,
            "head_len": f.head_len,
        }
        return {"files": {f.path: position}}
