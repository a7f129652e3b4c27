"""Tailing more files than may be open: which followed files to close, and finding them again.

A file source that follows a glob of many files (``follow = true``) keeps at most
``max_open_files`` of them open. A file is closed (*parked*: its path, identity, offset
and the framer holding its unfinished record stay in memory) once it has not grown for
``close_idle_after``, or, when files that want reading outnumber the free descriptors,
the open files that grew least recently (all of them read to their end then) make room.
Parked files are looked at with a ``stat`` each poll, by path and identity (device and
inode; the first bytes when reopened):

- grown at the same inode: reopened where it was, the same framer: no line is lost or
  repeated, a line half written when it was closed included.
- shrunk below the offset, or its first bytes other (``copytruncate``, ``> file``): read
  again from its start, as an open file is.
- renamed to a name the patterns match (``app.log`` to ``app.log.1``): it is the same
  file under its new name (:meth:`Tailing._renamed`; an open file too), neither finished
  nor read again.
- the path names another file or none (rotated away, deleted): the old inode is looked
  for in the path's directory (:func:`~chworkers.daemon.closedfiles.find_moved`); found,
  what it holds past the offset is read and the file finished; not found, or found
  holding other first bytes (another file took the freed inode), it was
  deleted: it ends where it was read to (a last line without its newline, held by the
  framer, counts as a line, as at the end of any file). What was written to it and not
  read yet when it was deleted (at most a ``poll_interval``'s worth, or what it gained
  while waiting its turn for a descriptor) cannot be read: a deleted file's bytes go
  with its last descriptor, and none was open.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import BinaryIO

from prometheus_client import Counter

from chworkers.daemon.checkpoints import head_of, same_head
from chworkers.daemon.closedfiles import (
    Change,
    Finished,
    Parked,
    change_of,
    find_moved,
    still_finished,
    to_park,
)
from chworkers.daemon.framing import Framer
from chworkers.daemon.tailingwatch import FileWatch
from chworkers.daemon.ticket import Ticket

__all__ = ["OpenFile", "Tailing"]

#: The sources' logger, as before they were cut into modules (log filters keep working).
log = logging.getLogger("chworkers.daemon.sources")


@dataclasses.dataclass
class OpenFile:
    """A file a file source has open, and where it is in it."""

    path: str
    fh: BinaryIO
    dev: int
    ino: int
    offset: int
    framer: Framer
    head: int = 0  # crc32 of the file's first head_len bytes: tells a reused inode apart
    head_len: int = 0
    #: Bytes of the file known to be durable (fsync'd since it was opened; -1: cannot be).
    synced: int = 0
    #: The spool's hard link to the file, which its references name (None: copied).
    link: str | None = None
    #: The last records added from it: the link is released once they are spooled.
    last: Ticket | None = None
    #: When (time.monotonic()) it was opened or last grew: idle files are closed first.
    grew_at: float = 0.0
    #: Its end was reached: data read after it is checked to follow the same first bytes.
    at_end: bool = False


class Tailing:
    """A followed file source's bookkeeping of open and parked files (the part of
    :class:`~chworkers.daemon.filesource.FileSource` that runs with ``follow``)."""

    name: str
    format: str
    max_record_bytes: int
    max_open_files: int
    close_idle_after: float
    _open: dict[str, OpenFile]
    _parked: dict[str, Parked]
    _pending: deque[str]
    _queued: set[str]
    _links: list[str]
    _watch: FileWatch | None
    _reopens: Counter | None
    _finished: dict[tuple[int, int], Finished]
    _recheck: set[str]
    _stop: threading.Event
    _error: Callable[[str], None]
    _add: Callable[..., None]
    _read: Callable[[OpenFile], bool]

    def _again(self) -> None:
        """Make the next poll a full one (what it must look at again is not only what
        is written to from now on)."""
        if self._watch is not None:
            self._watch.again()

    def _queue(self, path: str) -> None:
        if path not in self._queued:
            self._queued.add(path)
            self._pending.append(path)

    def _moved_along(self, matched: list[str]) -> dict[str, os.stat_result]:
        """Followed files renamed to names the patterns match that other followed files
        had (logrotate's numbered rotation: ``app.log.1`` to ``app.log.2``, then
        ``app.log`` to ``app.log.1``) are followed at their new names, all at once (one
        ``stat`` per path matched); one whose name a renamed file takes and that is gone
        from the patterns (deleted, ``rotate``'s oldest) is read to its end and finished
        first. The paths' ``stat`` (for :meth:`_tend`); those that are symbolic links in
        ``_links``."""
        held = {path: (f.dev, f.ino) for path, f in self._open.items()}
        held.update({path: (p.dev, p.ino) for path, p in self._parked.items()})
        stats: dict[str, os.stat_result] = {}
        now: dict[str, tuple[int, int]] = {}
        where: dict[tuple[int, int], str] = {}
        self._links = []
        for path in matched:
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    self._links.append(path)
                    st = os.stat(path)
            except OSError:
                continue
            stats[path] = st
            now[path] = (st.st_dev, st.st_ino)
            where.setdefault(now[path], path)
        moves = {
            old: where[ident]
            for old, ident in held.items()
            if now.get(old) != ident and where.get(ident, old) != old
        }
        for new in set(moves.values()) - set(moves):
            self._finish_displaced(new)
        while True:
            # A name still taken by a file that does not move (one displaced that could
            # not be finished now, or one whose own move waits) waits for the next poll,
            # and so does the move into it: moved now, it would drop the file there.
            staying = (self._open.keys() | self._parked.keys()) - moves.keys()
            waiting = {old for old, to in moves.items() if to in staying}
            if not waiting:
                break
            moves = {old: to for old, to in moves.items() if old not in waiting}
            self._again()
        files: dict[str, OpenFile | Parked] = {
            old: self._open.pop(old) if old in self._open else self._parked.pop(old)
            for old in moves
        }
        for old, new in moves.items():
            file = files[old]
            file.path = new
            if isinstance(file, OpenFile):
                self._open[new] = file
            else:
                file.at = None
                self._parked[new] = file
            if old in self._queued:  # whatever is at the old path now is another file
                self._queued.discard(old)
                self._pending = deque(p for p in self._pending if p != old)
            log.info("source %s: %s was renamed to %s; following it there", self.name, old, new)
        return stats

    def _finish_displaced(self, path: str) -> None:
        """Read the followed file at ``path``, which another followed file's name now
        names, to its end and finish it (it was deleted or renamed out of the patterns);
        still followed at ``path`` if it could not be now."""
        parked = self._parked.pop(path, None)
        if parked is not None:
            parked.at = find_moved(path, parked.dev, parked.ino)
            if parked.at is None:
                self._deleted(parked)
                return
            self._unpark(parked)  # at its new name; parked again if it cannot be opened
        f = self._open.get(path)
        for _ in range(8):  # each round reads to the end; the last finds the path taken
            if f is None or self._open.get(path) is not f or self._stop.is_set():
                break
            self._read(f)

    def _renamed(self, fresh: list[str], seen: dict[tuple[int, int], str]) -> list[str]:
        """Of the paths newly matched, those of new files: a file followed already that
        is now at one of them (renamed to a name the patterns match: ``app.log`` to
        ``app.log.1``) is followed there, neither finished nor read again; a file finished
        that was not written to since is skipped, not opened to be found finished."""
        new = []
        for path in fresh:
            try:
                st = os.stat(path)
            except OSError:
                new.append(path)  # opening it says what is wrong
                continue
            ident = (st.st_dev, st.st_ino)
            finished = self._finished.get(ident)
            if finished is not None and still_finished(finished, st):
                seen.setdefault(ident, path)  # (not gone: it is not forgotten)
                continue  # not opened again to be found finished
            old = seen.get(ident)
            if old is None:
                new.append(path)
                continue
            if _names(old, ident):
                continue  # a second name (a hard link) of a file followed already
            if old in self._open:
                f = self._open[path] = self._open.pop(old)
                f.path = path
            else:
                parked = self._parked[path] = self._parked.pop(old)
                parked.path = path
            if old in self._queued:  # whatever is at the old path now is another file
                self._queued.discard(old)
                self._pending = deque(p for p in self._pending if p != old)
            seen[ident] = path
            log.info("source %s: %s was renamed to %s; following it there", self.name, old, path)
        return new

    def _tend(self, stats: Mapping[str, os.stat_result]) -> None:
        """Followed files: queue the parked ones that grew (or are elsewhere now), and
        make room for those waiting (``stats``: the paths matched, looked at already)."""
        for path, parked in list(self._parked.items()):
            if path in self._queued:
                continue
            change = change_of(parked, stats.get(path))
            if change is Change.GREW:
                self._queue(path)
            elif change is Change.ELSEWHERE:
                parked.at = find_moved(path, parked.dev, parked.ino)
                if parked.at is None:
                    del self._parked[path]
                    self._deleted(parked)
                else:
                    self._queue(path)  # what it holds past the offset is read, then it ends
        self._make_room()

    def _deleted(self, parked: Parked) -> None:
        """A parked file was deleted: it ends where it was read to (its last record
        without its newline, held by the framer, is one, as at the end of any file)."""
        log.info(
            "source %s: %s was deleted while closed (read to offset %d)",
            self.name,
            parked.path,
            parked.offset,
        )
        records, rows = parked.framer.finish()
        if records:
            position = {
                "dev": parked.dev,
                "ino": parked.ino,
                "offset": parked.offset,
                "head": parked.head,
                "head_len": parked.head_len,
            }
            self._add(
                records, rows, {"files": {parked.path: position}}, header=parked.framer.header
            )

    def _make_room(self) -> None:
        """Close the followed files idle for ``close_idle_after``, and as many more as
        files wait for a descriptor beyond ``max_open_files`` (those that grew least
        recently: each was read to its end)."""
        grew_at = {path: f.grew_at for path, f in self._open.items()}
        for path in to_park(
            grew_at,
            wanting=len(self._pending),
            limit=self.max_open_files,
            idle_after=self.close_idle_after,
            now=time.monotonic(),
        ):
            self._park(self._open[path])

    def _park(self, f: OpenFile) -> None:
        """Close a followed file read to its end, keeping where it was (and its framer,
        with the record it holds unfinished) to reopen it there (a followed file is never
        spooled by reference: there is no link to release). One written to since it was
        read (closed to make room before its turn to be read came) is looked at again at
        the next poll: its write's event was taken already, and no other may come."""
        if os.fstat(f.fh.fileno()).st_size != f.offset:
            self._recheck.add(f.path)
        f.fh.close()
        del self._open[f.path]
        self._parked[f.path] = Parked(f.path, f.dev, f.ino, f.offset, f.framer, f.head, f.head_len)

    def _unpark(self, parked: Parked) -> None:
        """Reopen a parked file where it was (from its start when it was truncated or
        rewritten meanwhile; at its new name when it was rotated away)."""
        try:
            fh = open(parked.at or parked.path, "rb")  # noqa: SIM115 (kept open while tailing)
        except OSError as exc:
            self._parked[parked.path] = parked  # looked at again at the next poll
            self._again()
            if not isinstance(exc, FileNotFoundError):
                self._error(f"cannot open {parked.at or parked.path}: {exc.strerror}")
            return
        if self._reopens is not None:
            self._reopens.inc()
        st = os.fstat(fh.fileno())
        if (st.st_dev, st.st_ino) != (parked.dev, parked.ino):
            fh.close()  # replaced between the look and the open: the next poll tells
            self._again()
            parked.at = None
            self._parked[parked.path] = parked
            return
        if parked.at is not None and not _same_file(fh.fileno(), parked, st.st_size):
            # Found by its inode at another name, but that is another file: the inode
            # was freed and taken (logrotate deleting the oldest, then copying or
            # creating). Reading it would read a file the paths do not name, or read
            # twice one they do.
            fh.close()
            log.info(
                "source %s: %s is gone (its inode is %s's now)", self.name, parked.path, parked.at
            )
            self._deleted(parked)
            return
        f = OpenFile(
            parked.path,
            fh,
            parked.dev,
            parked.ino,
            parked.offset,
            parked.framer,
            parked.head,
            parked.head_len,
            grew_at=time.monotonic(),
        )
        if st.st_size < parked.offset or (
            parked.head_len and not same_head(fh.fileno(), parked.head, parked.head_len, st.st_size)
        ):
            log.info(
                "source %s: %s was truncated or rewritten while closed; reading it from the start",
                self.name,
                parked.path,
            )
            self._restart(f)
        fh.seek(f.offset)
        self._open[parked.path] = f

    def _rewritten(self, f: OpenFile) -> bool:
        """Whether a followed file that grows again after its end was reached was
        truncated and written past where it was read to meanwhile (``copytruncate`` while
        its writer goes on, between two polls): its first bytes are not the ones read. It
        is then read again from its start, as a file found shorter is; reading on from
        the old offset would skip the new lines before it and cut one in two."""
        if f.head_len == 0 or same_head(f.fh.fileno(), f.head, f.head_len, f.offset):
            return False
        log.info(
            "source %s: %s was truncated and written again; reading it from the start",
            self.name,
            f.path,
        )
        self._restart(f)
        f.fh.seek(0)
        return True

    def _restart(self, f: OpenFile) -> None:
        """Read a truncated file again from its start (what the framer held is gone)."""
        f.offset = 0
        f.framer = Framer(
            self.format,
            max_record_bytes=self.max_record_bytes,
            on_skip=functools.partial(self._skipped, f.path),
        )
        f.head, f.head_len = head_of(f.fh.fileno())

    def _skipped(self, path: str, message: str) -> None:
        self._error(f"{path}: {message}")


def _same_file(fd: int, parked: Parked, size: int) -> bool:
    """Whether the file open at ``fd`` (the parked file's inode) is still the parked
    file: as long as where it was read to, and starting with the same bytes."""
    if size < parked.offset:
        return False
    return not parked.head_len or same_head(fd, parked.head, parked.head_len, size)


def _names(path: str, ident: tuple[int, int]) -> bool:
    """Whether ``path`` is (still) a name of the file ``ident``."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == ident
