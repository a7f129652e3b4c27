"""Worker processes' log records, emitted by the supervisor's process.

Whatever configures logging (the CLI, or the program using the framework) does so in
the supervisor's process; worker processes start with nothing configured (forkserver,
spawn) or with handlers they must not write through (fork). So a worker's root logger
gets one :class:`ForwardingHandler`, which sends each record (message formatted,
traceback as text) over the worker's result pipe; the supervisor's loop hands it to
:func:`emit`, through the supervisor's own handlers and format. A record keeps the
worker's pid and gains ``worker`` (its name). Levels are copied into the worker when it
starts, so that records nobody would see are not sent at all.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TextIO

#: Record attributes that are the standard ones (everything else is an ``extra``).
STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}

#: Longest message (and traceback) a worker sends; the rest is cut, and says so.
MAX_TEXT = 64 * 1024

#: Where a worker's stray ``sys.stderr`` writes are logged (see :class:`StderrToLog`).
STDERR_LOGGER = "chworkers.stderr"


def levels() -> dict[str, int]:
    """The levels set in this process: the root's (under ``""``) and every logger's that
    has one of its own; a worker applies them at start (:func:`install`)."""
    out = {"": logging.getLogger().level}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            out[name] = logger.level
    return out


def to_wire(record: logging.LogRecord, worker: str) -> dict[str, Any]:
    """A record as plain, picklable data: the message formatted, the traceback as text,
    extras that do not pickle as their ``repr``."""
    data: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key in ("args", "exc_info", "msg", "message"):
            continue
        if key in STANDARD_ATTRIBUTES or isinstance(value, str | int | float | bool | type(None)):
            data[key] = value
        else:
            data[key] = repr(value)
    data["msg"] = _capped(record.getMessage())
    data["args"] = None
    if record.exc_info and not record.exc_text:
        data["exc_text"] = logging.Formatter().formatException(record.exc_info)
    if data.get("exc_text"):
        data["exc_text"] = _capped(data["exc_text"])
    data["worker"] = worker
    return data


def _capped(text: str) -> str:
    """A message as long as a log line should be (a batch's repr is not)."""
    if len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]}... [{len(text) - MAX_TEXT} more characters cut]"


def emit(data: Mapping[str, Any]) -> None:
    """Log a worker's record here, as if it had been logged in this process."""
    record = logging.makeLogRecord(dict(data))
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


class ForwardingHandler(logging.Handler):
    """Sends a worker's records to the supervisor with ``send(data)``."""

    def __init__(self, send: Callable[[dict[str, Any]], None], worker: str) -> None:
        super().__init__()
        self._send = send
        self._worker = worker
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            return  # a record logged while sending one (would deadlock or recurse)
        self._local.busy = True
        try:
            self._send(to_wire(record, self._worker))
        except OSError:
            pass  # the supervisor is gone: nobody is left to read it
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False


class _Bytes:
    """``sys.stderr.buffer`` for code that writes bytes: decoded, then as text."""

    def __init__(self, text: StderrToLog) -> None:
        self._text = text

    def write(self, data: bytes) -> int:
        self._text.write(bytes(data).decode("utf-8", "backslashreplace"))
        return len(data)

    def flush(self) -> None:
        self._text.flush()


class StderrToLog(io.TextIOBase):
    """A ``sys.stderr`` that turns what is written to it into log records (one a line; a
    ``Traceback`` block as one record with the traceback as its exception text), so
    that JSON logs stay JSON whatever prints to stderr."""

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, logger: str = STDERR_LOGGER, original: TextIO | None = None) -> None:
        self._log = logging.getLogger(logger)
        self.original: TextIO = original or sys.__stderr__ or sys.stderr
        self._buffer = ""
        self._traceback: list[str] = []
        self._lock = threading.RLock()
        self._busy = False
        self.buffer = _Bytes(self)

    def write(self, text: str) -> int:
        with self._lock:
            if self._busy:  # logging itself complains (handleError): do not loop
                self.original.write(text)
                return len(text)
            self._busy = True
            try:
                self._buffer += text
                while "\n" in self._buffer:
                    line, _, self._buffer = self._buffer.partition("\n")
                    self._line(line)
            finally:
                self._busy = False
        return len(text)

    def _line(self, line: str) -> None:
        if self._traceback:
            self._traceback.append(line)
            if line and not line[0].isspace():  # the exception line ends the block
                block, self._traceback = self._traceback, []
                self._log.error("%s", line, extra={"exception": "\n".join(block)})
        elif line.startswith("Traceback (most recent call last):"):
            self._traceback = [line]
        elif line.strip():
            self._log.warning("%s", line)

    def flush(self) -> None:
        with self._lock:
            if self._busy:
                return
            if self._traceback:
                block, self._traceback = self._traceback, []
                self._log.error("%s", block[-1], extra={"exception": "\n".join(block)})
            if self._buffer.strip():
                self._log.warning("%s", self._buffer)
            self._buffer = ""

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.original.fileno()

    def writable(self) -> bool:
        return True


def apply_levels(levels: Mapping[str, int]) -> None:
    """Set the levels :func:`levels` read in another process."""
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


def install(
    send: Callable[[dict[str, Any]], None],
    worker: str,
    levels: Mapping[str, int],
    *,
    capture_stderr: bool = False,
) -> None:
    """Set up logging in a new worker process: records go to the supervisor only."""
    root = logging.getLogger()
    for handler in list(root.handlers):  # inherited across a fork: not ours to write to
        root.removeHandler(handler)
    root.addHandler(ForwardingHandler(send, worker))
    apply_levels(levels)
    if capture_stderr:
        sys.stderr = StderrToLog()
