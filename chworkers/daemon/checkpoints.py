"""Where the file sources are: each pipeline's read positions, saved durably.

A file source attaches its read position to every add; the position travels inside the
spooled batch and is committed here right after the batch is spooled, before it is
inserted (:meth:`Checkpoints.commit_batch`). After a crash the newer of the saved
position and the positions in the spooled batches wins (:meth:`Checkpoints.recover`),
so no record is read into the spool twice. A position names a file by its inode and a
checksum of its first bytes, so a rotated or recreated file is not mistaken for the old
one. A save that fails is retried every second and reported by :meth:`Checkpoints.problems`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from chworkers.daemon.batchfile import SpooledBatch, fsync_directory

__all__ = ["Checkpoints"]

log = logging.getLogger(__name__)


class Checkpoints:
    """Where each pipeline's file sources are, saved atomically; offsets only grow."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._positions: dict[str, dict[str, dict[str, int]]] = {}
        self._unsaved: dict[str, str] = {}  # pipeline -> why its last save failed

    def _path(self, pipeline: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in pipeline)
        return self.directory / f"{safe}.json"

    def load(self, pipeline: str) -> dict[str, dict[str, int]]:
        """``{path: {"dev", "ino", "offset"}}`` for the pipeline (empty if none)."""
        with self._lock:
            if pipeline not in self._positions:
                try:
                    data = json.loads(self._path(pipeline).read_text())
                    self._positions[pipeline] = {
                        str(p): {k: int(v) for k, v in pos.items()} for p, pos in data.items()
                    }
                except FileNotFoundError:
                    self._positions[pipeline] = {}
                except (ValueError, AttributeError) as exc:
                    log.error("checkpoint %s is unreadable (%s); starting over", pipeline, exc)
                    self._positions[pipeline] = {}
            return {p: dict(pos) for p, pos in self._positions[pipeline].items()}

    def commit(self, pipeline: str, files: Mapping[str, Mapping[str, int]]) -> None:
        """Merge positions (a later offset on the same inode wins) and save durably."""
        self.load(pipeline)
        with self._lock:
            current = self._positions[pipeline]
            changed = False
            for path, pos in files.items():
                old = current.get(path)
                if old is None or not _same_file(old, pos) or pos["offset"] > old["offset"]:
                    current[path] = dict(pos)
                    changed = True
            if not changed and pipeline not in self._unsaved:
                return
            # Saved even when nothing changed if the last save failed: the positions in
            # memory are ahead of the file, and a restart would read those rows again.
            data = json.dumps(current, sort_keys=True).encode()
            target = self._path(pipeline)
            tmp = target.with_suffix(".tmp")
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
                fsync_directory(self.directory)  # the rename itself must survive a crash
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                self._unsaved[pipeline] = f"cannot save {target}: {exc.strerror or exc}"
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


def _same_file(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    """Do two saved positions name the same file? The same inode, and the same first
    bytes where both fingerprinted as many (an inode number is reused after a delete)."""
    if (a["dev"], a["ino"]) != (b["dev"], b["ino"]):
        return False
    if a.get("head_len") is not None and a.get("head_len") == b.get("head_len"):
        return a.get("head") == b.get("head")
    return True
