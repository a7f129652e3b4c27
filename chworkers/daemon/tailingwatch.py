"""Which of a followed file source's files changed since its last poll, told by inotify.

Without it, every ``poll_interval`` a followed source matched its patterns again (a
``glob``, a directory listing) and looked at every file it follows (a ``stat`` each): an
idle poll cost ~25 ms of CPU at 2,000 files, ~140 ms at 10,000 (0.55 CPU s/s at the
default 250 ms). With it (Linux), the directories the patterns lead to are watched, and
a poll reads what the kernel queued since the last one:

- nothing: nothing changed, nothing is listed or looked at (an idle poll costs the same
  at 10 files as at 10,000);
- a followed file written to (``IN_MODIFY``, a truncation too): that file alone is looked
  at (a closed one reopened when it grew, an open one read);
- anything else about a name the patterns may match, or about a watched directory (a
  file created, renamed, deleted, its mode changed; a watched directory gone; the
  kernel's queue overflowed): the poll is a *full* one, as without inotify: the patterns
  matched again, every followed file looked at.

A full poll also comes at least every :data:`RESCAN_INTERVAL` seconds, whatever the
events: a file changed in a way inotify does not report (written by another host over
NFS, through a shared ``mmap``) is seen then. A followed path that is a symbolic link
(Kubernetes' ``/var/log/containers/*.log``) is watched in its target's directory too,
where its writes are reported. Where inotify cannot be had (not Linux, the user's
``fs.inotify.max_user_instances`` or ``max_user_watches`` reached), every poll is a full
one, as before, said once in the log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import glob
import importlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

_inotify: Any = None
with contextlib.suppress(ImportError):  # not Linux: every poll is a full one
    _inotify = importlib.import_module("inotify_simple")

__all__ = ["RESCAN_INTERVAL", "Changes", "FileWatch"]

#: The sources' logger, as before they were cut into modules (log filters keep working).
log = logging.getLogger("chworkers.daemon.sources")

#: A followed source matches its patterns again and looks at every file at least this
#: often (seconds), events or not.
RESCAN_INTERVAL = 10.0

if _inotify is not None:
    _f = _inotify.flags
    _MODIFY = int(_f.MODIFY)
    _NAMES = int(_f.CREATE | _f.DELETE | _f.MOVED_FROM | _f.MOVED_TO | _f.ATTRIB)
    #: Events about a watched directory itself, or the queue: anything may have changed.
    _LOST = int(_f.DELETE_SELF | _f.MOVE_SELF | _f.UNMOUNT | _f.Q_OVERFLOW | _f.IGNORED)
    _MASK = _MODIFY | _NAMES | int(_f.DELETE_SELF | _f.MOVE_SELF | _f.ONLYDIR)


@dataclasses.dataclass
class Changes:
    """What a poll must look at."""

    #: Anything may have changed: match the patterns again, look at every file.
    full: bool
    #: The followed paths written to since the last poll (when not ``full``).
    written: set[str] = dataclasses.field(default_factory=set)


_FULL = Changes(full=True)


class FileWatch:
    """inotify watches on the directories a followed source's patterns lead to (and on
    those of its symbolic links' targets); one per source, used by its thread alone."""

    def __init__(self, source: str, patterns: Sequence[str]) -> None:
        self.source = source
        #: Each pattern and its directories' patterns (``/a/*/b/*.log``: ``/a``, ``/a/*``,
        #: ``/a/*/b``): a name any of them may match matters; its directory is watched.
        self._levels: list[str] = []
        self._dirs: list[str] = []
        for pattern in patterns:
            self._levels.append(pattern)
            directory = os.path.dirname(pattern)
            chain = []
            while directory and directory not in chain:
                chain.append(directory)
                if not glob.has_magic(directory):
                    break  # its parents: no name of theirs can change what is matched
                directory = os.path.dirname(directory)
            self._levels += chain
            self._dirs += reversed(chain or [""])
        self._inotify: Any = None
        self._watched: dict[str, int] = {}  # directory -> watch descriptor
        self._by_wd: dict[int, str] = {}
        self._targets: set[str] = set()  # directories watched for links' targets only
        self._links: dict[str, str] = {}  # a followed link's target -> the link
        self._next_full = 0.0
        self._failed = False  # a watch could not be added: every poll is full
        if _inotify is None:
            log.info("source %s: no inotify here: every poll matches its paths", source)
            return
        try:
            self._inotify = _inotify.INotify(nonblocking=True)
        except OSError as exc:  # EMFILE: fs.inotify.max_user_instances
            log.warning(
                "source %s: cannot watch its files with inotify (%s; raise "
                "fs.inotify.max_user_instances): every poll matches its paths and looks "
                "at every file",
                source,
                exc.strerror or exc,
            )

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def changes(self) -> Changes:
        """What changed since the last call (a full poll is due: :data:`_FULL`)."""
        inotify = self._inotify
        if inotify is None or self._failed or time.monotonic() >= self._next_full:
            return _FULL
        written: set[str] = set()
        full = False
        for event in inotify.read(timeout=0):
            if event.mask & _LOST:
                full = True
                continue
            directory = self._by_wd.get(event.wd)
            if directory is None:
                continue  # a watch removed since
            path = os.path.join(directory, event.name)
            if event.mask & _MODIFY:
                written.add(self._links.get(path, path))
            elif path in self._links or (directory not in self._targets and self.may_match(path)):
                full = True
        if full:
            return _FULL
        return Changes(full=False, written=written)

    def again(self) -> None:
        """Make the next poll a full one."""
        self._next_full = 0.0

    def watched(self, links: Iterable[str]) -> None:
        """A full poll is done: watch the directories the patterns lead to now, and those
        of the targets of ``links`` (the followed paths that are symbolic links). A
        directory newly watched makes the next poll a full one: what changed in it
        between this poll's listing and its watch is seen then."""
        inotify = self._inotify
        if inotify is None:
            return
        self._next_full = time.monotonic() + RESCAN_INTERVAL
        wanted = dict.fromkeys(
            found
            for directory in self._dirs
            for found in (glob.glob(directory) if glob.has_magic(directory) else [directory])
        )
        self._links = {}
        for link in links:
            target = os.path.realpath(link)
            self._links[target] = link
            wanted.setdefault(os.path.dirname(target))
        self._targets = {d for d in wanted if d not in self._dirs and not self._pattern_dir(d)}
        for directory in set(self._watched) - set(wanted):
            wd = self._watched.pop(directory)
            self._by_wd.pop(wd, None)
            with contextlib.suppress(OSError):  # gone with its directory
                inotify.rm_watch(wd)
        failed = False
        for directory in wanted:
            if directory in self._watched:
                continue
            try:
                wd = inotify.add_watch(directory or ".", _MASK)
            except OSError as exc:
                if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                    failed = True
                    if not self._failed:
                        log.warning(
                            "source %s: cannot watch %s with inotify (%s; raise "
                            "fs.inotify.max_user_watches if that is the reason): every "
                            "poll matches its paths and looks at every file",
                            self.source,
                            directory or ".",
                            exc.strerror or exc,
                        )
                continue
            self._watched[directory] = wd
            self._by_wd[wd] = directory
            self._next_full = 0.0  # what changed before the watch: seen at the next poll
        if self._failed and not failed:
            log.info("source %s: its files are watched with inotify again", self.source)
        self._failed = failed

    def _pattern_dir(self, directory: str) -> bool:
        return any(fnmatch.fnmatchcase(directory, d) for d in self._dirs)

    def may_match(self, path: str) -> bool:
        """Whether a name in a watched directory may change what the patterns match
        (fnmatch's ``*`` also matches ``/`` and dot files: in doubt, it may)."""
        return any(fnmatch.fnmatchcase(path, level) for level in self._levels)
