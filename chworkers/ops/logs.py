"""Logging setup for the command line (the library itself never configures logging).

``text`` is for people (one line a record); ``json`` is one JSON object a line for log
shippers (journald, Loki, Vector), with the record's extra fields included. Worker
processes' records arrive here too (:mod:`chworkers.ops.workerlogs`), with the worker's pid
and name. In ``json`` every line is JSON: what other code prints to stderr (a server's
traceback, a warning) and uncaught exceptions are turned into records as well.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any, Literal, TextIO

from chworkers.ops.workerlogs import STANDARD_ATTRIBUTES, StderrToLog
from chworkers.settings import setting, validate


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted where it happened (a worker's record)
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger[pid]: message``; ``[pid worker-N]`` for a worker's record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s[%(origin)s]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        worker = getattr(record, "worker", None)
        record.origin = f"{record.process} {worker}" if worker else str(record.process)
        return super().format(record)


Level = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
Format = Literal["text", "json"]


@dataclasses.dataclass(frozen=True)
class LogSettings:
    """How the command line logs (``[log]``; ``--log-level`` and ``--log-format``, which
    win over the config file, also when SIGHUP reads it again)."""

    level: Level = setting(
        "INFO",
        "Log level of the messages on stderr (a change in the file applies on SIGHUP).",
        reload=True,
        flag="--log-level",
    )
    format: Format = setting(
        "text",
        "Log lines for people (text), or one JSON object a line (json).",
        flag="--log-format",
    )

    def __post_init__(self) -> None:
        validate(self, source="log")


def configure(
    level: str = LogSettings.level,
    format: Format = LogSettings.format,
    stream: TextIO | None = None,
) -> None:
    """Send chworkers' (and everyone's) log records to ``stream`` (stderr)."""
    if stream is None:
        stream = sys.stderr
    if isinstance(stream, StderrToLog):  # configured before: write to the real stderr
        stream = stream.original
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    if format == "json":
        if not isinstance(sys.stderr, StderrToLog):
            sys.stderr = StderrToLog(original=stream)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_exception


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("chworkers").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    thread = args.thread.name if args.thread is not None else "?"
    logging.getLogger("chworkers").error(
        "thread %s failed",
        thread,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )
