"""The dead-letter directory: what ClickHouse would not take, kept with the reason.

One :class:`DeadLetters` for everything that fails for good:

* rows ClickHouse rejected: the insert task (:mod:`chworkers.clickhouse.inserts`) bisects a batch
  that ClickHouse rejects for its data and returns the records it could not insert; the
  daemon hands them to :meth:`DeadLetters.write` before the batch leaves the spool;
* tasks that failed for good in a :class:`~chworkers.workers.supervisor.Supervisor` (a fatal
  error, or a task that kept killing its worker): given as middleware
  (``Supervisor(middleware=[DeadLetters(directory)])``), it writes each such task's
  rows, from a thread of its own, never on the supervisor's loop thread.

Records are appended to ``<directory>/<table>/<YYYY-MM-DD>.jsonl`` as JSON lines with
the error and the original record, durably (the file is fsync'd, and so is each
directory a new file or folder was created in), and counted in
``chworkers_dead_letter_rows_total``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chworkers.clickhouse.inserts import LINE_FORMATS, Rejected, split_records
from chworkers.daemon.batchfile import fsync_directory, write_all
from chworkers.daemon.letterkeys import LetterKeys
from chworkers.daemon.statepaths import probe_writable, unusable
from chworkers.ops.metrics import Metrics
from chworkers.wording import plural
from chworkers.workers.middleware import Middleware

if TYPE_CHECKING:
    from chworkers.workers.deadletter import DeadLetter

log = logging.getLogger(__name__)

#: Where tasks that are not inserts (``submit``, ``call``) are written.
TASKS_FOLDER = "_tasks"


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    record: bytes
    error: BaseException
    reason: str
    binary: bool = False  # the record is not text: written as base64
    rows: int = 1  # rows the record holds (a binary batch dead-lettered whole: all of it)
    key: str | None = None  # written once by this key, across restarts (letterkeys.py)


class DeadLetters(Middleware):
    """Appends what failed for good to ``<directory>/<table>/<YYYY-MM-DD>.jsonl``."""

    worker_side = False

    def __init__(
        self, directory: str | os.PathLike[str], *, metrics: Metrics | None = None
    ) -> None:
        self.directory = Path(directory)
        self._metrics = metrics
        self._lock = threading.Lock()
        self._letters: queue.SimpleQueue[DeadLetter | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        #: Called with the rows of every write (a binary batch dead-lettered whole
        #: counts its rows, not 1), after they are on disk.
        self.on_rows: Callable[[int], None] | None = None
        self._keys = LetterKeys(self.directory)  # the keyed letters written, by key

    def ready(self) -> None:
        """Create the directory and check that letters can be written in it and in each
        table's folder already there, now rather than at the first letter (the daemon
        calls this as it starts): :class:`~chworkers.errors.UnusablePathError` otherwise."""
        with self._lock:
            what = "dead-letter directory"
            try:
                _make_dirs_durably(self.directory)
                folders = [p for p in self.directory.iterdir() if p.is_dir()]
            except OSError as exc:
                raise unusable(what, self.directory, exc, "create") from exc
            probe_writable(self.directory, what)
            for folder in folders:
                probe_writable(folder, what)
            index = "dead letters' key index"
            try:
                self._keys.read()  # the keyed letters written, checked against the letters
            except OSError as exc:
                raise unusable(index, self._keys.path, exc, "read") from exc
            try:
                self._keys.compact()  # the index rewritten with the verified keys only
            except OSError as exc:
                raise unusable(index, self._keys.path, exc, "rewrite") from exc

    def write(
        self,
        table: str,
        rejected: Sequence[Rejected],
        *,
        pipeline: str = "",
        batch: str = "",
        binary: bool = False,
    ) -> Path | None:
        """Append rejected records durably (returns once they are on disk); ``binary``:
        the records are bytes of a binary format (a Parquet batch), kept as base64."""
        entries = [_Entry(r.record, r.error, r.reason, binary, r.rows) for r in rejected]
        return self._append(table, entries, pipeline=pipeline, batch=batch)

    def write_errors(
        self,
        table: str,
        records: Sequence[tuple[bytes, BaseException]],
        *,
        reason: str,
        pipeline: str = "",
        batch: str = "",
        rows: int = 1,
        keys: Sequence[str | None] | None = None,
    ) -> Path | None:
        """Append input that never reached ClickHouse (a broker's poison message, a file
        that cannot be read), each with the error that stopped it, durably; each record
        holds ``rows`` rows. ``keys`` (one per record, or None): a record whose key was
        written before, in this run or an earlier one, is not written again
        (:mod:`~chworkers.daemon.letterkeys`); None when nothing was written."""
        given = list(keys) if keys is not None else [None] * len(records)
        entries = [
            _Entry(r, e, reason, not _is_text(r), rows, key)
            for (r, e), key in zip(records, given, strict=True)
        ]
        return self._append(table, entries, pipeline=pipeline, batch=batch)

    # -- as supervisor middleware --------------------------------------------------------

    def after_dead_letter(self, letter: DeadLetter) -> None:
        """Queue a failed task for the writer thread (this runs on the loop thread)."""
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_letters, name="chworkers-dead-letters", daemon=True
                )
                self._writer.start()
        self._letters.put(letter)

    def after_supervisor_stop(self) -> None:
        self.close()

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued, then stop the writer thread."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._letters.put(None)
            writer.join(timeout)

    def _write_letters(self) -> None:
        while (letter := self._letters.get()) is not None:
            try:
                entries = _entries(letter)
                table = letter.table or TASKS_FOLDER
                self._append(table, entries, batch=letter.token or f"task {letter.task_id}")
            except Exception:
                log.exception(
                    "could not write the dead letter of task %d (%s)",
                    letter.task_id,
                    letter.description,
                )

    # -- the file --------------------------------------------------------------------------

    def _unwritten(self, entries: Sequence[_Entry]) -> Sequence[_Entry]:
        """``entries`` but the keyed ones written already (the lock held)."""
        keys = [item.key for item in entries if item.key is not None]
        again = self._keys.written(keys) if keys else set()
        if not again:
            return entries
        log.info(
            "%s written already (a message delivered again after a restart), not again: %s",
            plural(len(again), "dead letter"),
            ", ".join(sorted(again)[:5]),
        )
        return [item for item in entries if item.key not in again]

    def _append(
        self, table: str, entries: Sequence[_Entry], *, pipeline: str = "", batch: str = ""
    ) -> Path | None:
        now = time.time()
        folder = self.directory / _safe(table)
        path = folder / (time.strftime("%Y-%m-%d", time.gmtime(now)) + ".jsonl")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        with self._lock:
            entries = self._unwritten(entries)
            if not entries:
                return None
            data = "".join(
                _line(item, stamp=stamp, table=table, pipeline=pipeline, batch=batch)
                for item in entries
            ).encode()
            keys = [item.key for item in entries if item.key is not None]
            _make_dirs_durably(folder)
            created = not path.exists()
            at = 0 if created else path.stat().st_size
            if at and not _ends_a_line(path, at):
                # A line torn by a crash or power loss mid-append: the letters start on a
                # line of their own, not glued to it (no reader could parse the first).
                data, at = b"\n" + data, at + 1
            if keys:  # where they go, first: a start checks that they got there
                self._keys.intend(path, at, len(entries), keys)
            _append_whole(path, data)
            if created:  # the new name must survive a power cut as well as the data
                fsync_directory(folder)
            if keys:
                self._keys.done(keys)
        rows = sum(item.rows for item in entries)
        log.warning(
            "%s for %s rejected (first: %s); written to %s",
            plural(rows, "row"),
            table,
            (str(entries[0].error).splitlines() or [""])[0][:200],
            path,
        )
        if self._metrics is not None:
            self._metrics.dead_letter_rows.labels(table=table).inc(rows)
        if self.on_rows is not None:
            self.on_rows(rows)
        return path


def _line(item: _Entry, *, stamp: str, table: str, pipeline: str, batch: str) -> str:
    entry: dict[str, Any] = {
        "time": stamp,
        "table": table,
        "pipeline": pipeline,
        "batch": batch,
        "reason": item.reason,
        "error": _error(item.error),
    }
    if item.key is not None:
        entry["key"] = item.key
    if item.rows != 1:
        entry["rows"] = item.rows
    if item.binary:
        entry["record_base64"] = base64.b64encode(item.record).decode()
    else:
        entry["record"] = item.record.decode("utf-8", "backslashreplace").rstrip("\n")
    return json.dumps(entry, ensure_ascii=False) + "\n"


def _error(error: BaseException) -> dict[str, Any]:
    return {
        "code": getattr(error, "code", None),
        "name": getattr(error, "name", None) or type(error).__name__,
        "message": getattr(error, "message", None) or str(error),
    }


def _entries(letter: DeadLetter) -> list[_Entry]:
    """A failed task as dead-letter records: one per row when its data can be read."""
    from chworkers.workers.tasks import INSERT

    if letter.kind != INSERT:
        return [_Entry(letter.description.encode(), letter.error, letter.reason)]
    try:
        spec = letter.batch()
        records, binary = _records(spec.form, spec.fmt, spec.data)
    except Exception as exc:  # undecodable: keep at least what it was
        log.warning("dead letter of task %d: cannot read its data: %s", letter.task_id, exc)
        return [
            _Entry(letter.description.encode(), letter.error, letter.reason, rows=letter.rows or 1)
        ]
    # A binary batch is one record: all its rows.
    rows = max(1, letter.rows) if binary else 1
    return [_Entry(record, letter.error, letter.reason, binary, rows) for record in records]


def _records(form: str, fmt: str | None, data: Any) -> tuple[list[bytes], bool]:
    if form == "raw":
        line_format = LINE_FORMATS.get(fmt or "")
        if line_format is None:  # Native, Parquet...: the batch whole, as base64
            return [bytes(data)], True
        records = split_records(bytes(data), quoted_newlines=line_format.quoted_newlines)
        if line_format.header and records:
            header = records[0]
            return [header + record for record in records[1:] if record.strip()], False
        return [r for r in records if r.strip()], False
    if form == "columns":
        rows: Any = zip(*data, strict=True)
    elif form == "pandas":
        rows = data.to_dict("records")
    elif form == "arrow":
        rows = data.to_pylist()
    else:
        rows = data
    return [json.dumps(row, default=str, ensure_ascii=False).encode() for row in rows], False


def _is_text(record: bytes) -> bool:
    try:
        record.decode()
    except UnicodeDecodeError:
        return False
    return True


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
        fsync_directory(directory.parent)


def _ends_a_line(path: Path, size: int) -> bool:
    """Whether the file of ``size`` bytes ends with a newline."""
    with path.open("rb") as fh:
        fh.seek(size - 1)
        return fh.read(1) == b"\n"


def _append_whole(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` and fsync it, or raise leaving the file as it was: a
    write that fails halfway (the disk full) is cut off again, so that the retry (the
    batch stays spooled) does not append after a torn line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            write_all(fd, data)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)
