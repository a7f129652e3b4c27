"""Hard links that keep the files of batches spooled by reference.

A batch spooled by reference (:mod:`chworkers.daemon.extents`) is a byte range of the
file it was read from. A job that removes or renames that file once the daemon has read
it (a cleanup job, logrotate's ``create``, while ClickHouse is down or the daemon is
stopped) would take the records away before they are inserted. So a file source that
spools by reference first links each file it opens into the spool's ``links/``
directory (:meth:`SpoolLinks.pin`), and its references name the link: the file's inode
lives as long as a batch needs it, whatever happens to its name.

A link is removed once nothing needs it: the source has finished the file
(:meth:`SpoolLinks.release`) and every batch that references it has left the spool or
was copied into it (:meth:`SpoolLinks.detach`). At start, links no spooled batch names
are leftovers and are removed (:meth:`SpoolLinks.adopt`).

A hard link needs the file and the spool on the same file system, and a file system
that has hard links: where it cannot be made, the file's batches are spooled as copies
(logged once per source and reason). A link does not protect against a file truncated
or rewritten in place (the inode is the same, its bytes are not): see docs/daemon.md,
"Spooling by reference", for what does.

A link whose file has no other name any more (the source was removed) holds the whole
file on disk: :attr:`SpoolLinks.pinned` is what such links hold beyond the referenced
bytes (which count as their batches' size already), and counts against the spool's cap.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from chworkers.daemon.batchfile import SpooledBatch, fsync_directory
from chworkers.daemon.extents import Extent
from chworkers.daemon.statepaths import unusable
from chworkers.errors import SpoolWriteError

__all__ = ["SpoolLinks"]

log = logging.getLogger(__name__)

#: :attr:`SpoolLinks.pinned` is measured (a stat per link) at most this often (seconds).
REFRESH_EVERY = 1.0

#: Why a link could not be made, by errno, as the warning says it.
_WHY = {
    errno.EXDEV: "the spool is on another file system",
    errno.EPERM: "hard links to it are not allowed: fs.protected_hardlinks and a file "
    "the daemon does not own and cannot write, or a file system without them",
    errno.EOPNOTSUPP: "the file system has no hard links",
    errno.EMLINK: "the file has too many links",
    errno.ENOENT: "the file was removed before it could be linked",
}


class SpoolLinks:
    """The spool's ``links/`` directory and who needs each link (see the module's
    docstring)."""

    def __init__(self, spool_dir: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.directory = Path(spool_dir) / "links"
        self.fsync = fsync
        self._lock = threading.Lock()
        self._holders: dict[str, int] = {}  # link name -> sources reading its file
        self._batches: dict[str, dict[int, int]] = {}  # link name -> seq -> bytes referenced
        self._logged: set[tuple[str, str]] = set()
        #: Links whose source is done with them once the callable says so.
        self._releasing: list[tuple[str, Callable[[], bool]]] = []
        self._measured = -REFRESH_EVERY
        self._unsynced = False  # links made since the folder was last fsync'd
        #: Bytes that links whose file has no other name hold beyond the bytes their
        #: batches reference (updated by :meth:`refresh`).
        self.pinned = 0

    # -- sources -------------------------------------------------------------------

    def pin(self, fd: int, path: str, *, source: str) -> str | None:
        """Link the file open as ``fd`` (read as ``path`` by ``source``) into the spool;
        the link's path, or None when it cannot be made (its batches are then copied)."""
        name = f"{os.fstat(fd).st_ino}-{uuid.uuid4().hex[:12]}"
        target = self.directory / name
        try:
            if not self.directory.is_dir():
                self.directory.mkdir(exist_ok=True)
                if self.fsync:  # the folder must outlast a crash as its links do
                    fsync_directory(self.directory.parent)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                # The open file itself, whatever its name names now (linkat() with
                # AT_SYMLINK_FOLLOW, which os.link uses only given a directory's fd).
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
            except FileNotFoundError:
                # No /proc here, or the file has no name left: by its name, checked below.
                os.link(path, target)
            finally:
                os.close(dir_fd)
            opened, linked = os.fstat(fd), os.stat(target)
            if (opened.st_dev, opened.st_ino) != (linked.st_dev, linked.st_ino):
                target.unlink()
                raise OSError(errno.ENOENT, "the file was replaced while it was opened")
            self._unsynced = True  # made durable by sync(), before a batch names it
        except OSError as exc:
            with contextlib.suppress(OSError):
                target.unlink(missing_ok=True)
            why = _WHY.get(exc.errno or 0, exc.strerror or str(exc))
            if (source, why) not in self._logged:
                self._logged.add((source, why))
                log.warning(
                    "source %s: cannot link %s into the spool (%s): its batches are spooled "
                    'as copies (logged once per source and reason; spool_data = "copy" '
                    "copies without trying)",
                    source,
                    path,
                    why,
                )
            return None
        with self._lock:
            self._holders[name] = self._holders.get(name, 0) + 1
        return str(target)

    def sync(self) -> None:
        """Make the links made so far durable (the spool calls this before it writes a
        batch that names one): one fsync of the folder per batch at most, not one per
        file, which a load of many small files would pay dearly."""
        if not self._unsynced:
            return
        self._unsynced = False
        if self.fsync:
            try:
                fsync_directory(self.directory)
            except OSError as exc:
                self._unsynced = True
                raise SpoolWriteError(
                    f"cannot make the spool's links durable: {exc.strerror or exc}",
                    path=str(self.directory),
                    errno=exc.errno,
                ) from exc

    def release(self, link: str, after: Callable[[], bool] | None = None) -> None:
        """The source is done with the file (read to its end, or stopped), once
        ``after()`` says so: the last records it added from it are spooled (their batch
        references the link by then) or failed; checked by :meth:`refresh`."""
        name = Path(link).name
        if after is not None and not after():
            with self._lock:
                self._releasing.append((name, after))
            return
        self._release(name)

    def _release(self, name: str) -> None:
        with self._lock:
            left = self._holders.get(name, 0) - 1
            if left > 0:
                self._holders[name] = left
                return
            self._holders.pop(name, None)
            unused = name not in self._batches
        if unused:
            self._remove(name)
        else:
            self.refresh(force=True)

    # -- batches -------------------------------------------------------------------

    def attach(self, seq: int, refs: Iterable[Extent]) -> None:
        """Batch ``seq`` references these extents (of links, or of files by name)."""
        with self._lock:
            for name, size in self._linked(refs):
                uses = self._batches.setdefault(name, {})
                uses[seq] = uses.get(seq, 0) + size

    def detach(self, seq: int, refs: Iterable[Extent]) -> None:
        """Batch ``seq`` no longer references these extents (it left the spool, or its
        records were copied into it); links nothing needs any more are removed."""
        unused = []
        with self._lock:
            for name, _ in self._linked(refs):
                uses = self._batches.get(name)
                if uses is None or uses.pop(seq, None) is None:
                    continue
                if not uses:
                    del self._batches[name]
                    if name not in self._holders:
                        unused.append(name)
        for name in unused:
            self._remove(name)
        if unused:
            self.refresh(force=True)

    def adopt(self, batches: Iterable[SpooledBatch]) -> None:
        """At start: the batches found in the spool reference these links; any other
        link is a leftover (its batches were confirmed, or never written) and goes."""
        for batch in batches:
            self.attach(batch.seq, batch.extents)
        with self._lock:
            wanted = set(self._batches) | set(self._holders)
        try:
            names = [entry.name for entry in self.directory.iterdir()]
        except FileNotFoundError:
            names = []
        except OSError as exc:  # not a folder, not readable: the spool cannot start
            raise unusable("spool's links folder", self.directory, exc, "read") from exc
        for name in names:
            if name not in wanted:
                self._remove(name)
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> None:
        """Release the links whose sources are done with them now, and measure
        :attr:`pinned` again (at most every :data:`REFRESH_EVERY` seconds unless
        ``force``; the spool calls this when it publishes)."""
        with self._lock:
            releasing, self._releasing = self._releasing, []
        waiting = []
        for name, after in releasing:
            if after():
                self._release(name)
            else:
                waiting.append((name, after))
        with self._lock:
            self._releasing += waiting
            now = time.monotonic()
            if not force and now - self._measured < REFRESH_EVERY:
                return
            self._measured = now
            idle = {
                name: sum(uses.values())
                for name, uses in self._batches.items()
                if name not in self._holders
            }
        pinned = 0
        for name, referenced in idle.items():
            try:
                st = os.stat(self.directory / name)
            except OSError:
                continue
            if st.st_nlink == 1:  # the spool's link is its only name
                pinned += max(0, st.st_size - referenced)
        self.pinned = pinned

    def names(self) -> list[str]:
        """The links that are needed now (for tests and ``__repr__``)."""
        with self._lock:
            return sorted(set(self._batches) | set(self._holders))

    def _linked(self, refs: Iterable[Extent]) -> list[tuple[str, int]]:
        here = str(self.directory) + os.sep
        return [(ref.path[len(here) :], ref.size) for ref in refs if ref.path.startswith(here)]

    def _remove(self, name: str) -> None:
        try:
            (self.directory / name).unlink(missing_ok=True)
        except OSError as exc:  # left for the next start's adopt()
            log.warning("cannot remove the spool's link %s: %s", name, exc)
