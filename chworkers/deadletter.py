"""The dead-letter directory: records ClickHouse rejected, kept with the reason.

The insert task (:mod:`chworkers.inserts`) bisects a batch that ClickHouse rejects for
its data and returns the records it could not insert; the daemon hands them to
:class:`DeadLetters`, which appends them to ``<directory>/<table>/<YYYY-MM-DD>.jsonl``
as JSON lines with the error and the original record, durably (the file is fsync'd,
and so is each directory a new file or folder was created in) before the batch leaves
the spool, and counts them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from chworkers.inserts import Rejected
from chworkers.metrics import Metrics

log = logging.getLogger(__name__)


class DeadLetters:
    """Appends rejected records to ``<directory>/<table>/<YYYY-MM-DD>.jsonl``."""

    def __init__(
        self, directory: str | os.PathLike[str], *, metrics: Metrics | None = None
    ) -> None:
        self.directory = Path(directory)
        self._metrics = metrics
        self._lock = threading.Lock()

    def write(
        self, table: str, rejected: Sequence[Rejected], *, pipeline: str = "", batch: str = ""
    ) -> Path | None:
        if not rejected:
            return None
        now = time.time()
        folder = self.directory / _safe(table)
        path = folder / (time.strftime("%Y-%m-%d", time.gmtime(now)) + ".jsonl")
        lines = []
        for item in rejected:
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "table": table,
                "pipeline": pipeline,
                "batch": batch,
                "reason": item.reason,
                "error": {
                    "code": item.error.code,
                    "name": item.error.name,
                    "message": item.error.message,
                },
                "record": item.record.decode("utf-8", "backslashreplace").rstrip("\n"),
            }
            lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
        data = "".join(lines).encode()
        with self._lock:
            _make_dirs_durably(folder)
            created = not path.exists()
            with open(path, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if created:  # the new name must survive a power cut as well as the data
                _fsync_dir(folder)
        log.warning(
            "%d rows for %s rejected by ClickHouse (first: %s); written to %s",
            len(rejected),
            table,
            rejected[0].error.message.splitlines()[0][:200],
            path,
        )
        if self._metrics is not None:
            self._metrics.dead_letter_rows.labels(table=table).inc(len(rejected))
        return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


def _make_dirs_durably(folder: Path) -> None:
    """``mkdir -p folder``, fsyncing the parent of every directory it creates."""
    missing = []
    current = folder
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        _fsync_dir(directory.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
