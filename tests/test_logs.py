from __future__ import annotations

import io
import json
import logging
import sys
import threading

import pytest

from chworkers.ops import logs

pytestmark = pytest.mark.usefixtures("restore_logging")


def test_json_lines_with_extras_and_exceptions() -> None:
    out = io.StringIO()
    logs.configure("DEBUG", "json", out)
    log = logging.getLogger("chworkers.test")
    log.info("inserted %d rows", 5, extra={"table": "events"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = (
        json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")
    )
    assert first["message"] == "inserted 5 rows"
    assert first["level"] == "info" and first["logger"] == "chworkers.test"
    assert first["table"] == "events"
    assert "ValueError: boom" in second["exception"]


def test_text_format_and_level() -> None:
    out = io.StringIO()
    logs.configure("WARNING", "text", out)
    logging.getLogger("chworkers.test").info("hidden")
    logging.getLogger("chworkers.test").warning("shown")
    assert "hidden" not in out.getvalue()
    assert "WARNING chworkers.test" in out.getvalue() and "shown" in out.getvalue()


def test_json_turns_stray_stderr_and_uncaught_exceptions_into_records() -> None:
    """A server's traceback printed to stderr, a warning, a thread dying: all JSON."""
    out = io.StringIO()
    logs.configure("INFO", "json", out)
    print("----------------------------------------", file=sys.stderr)
    print("Exception occurred during processing of request", file=sys.stderr)
    sys.stderr.write("Traceback (most recent call last):\n")
    sys.stderr.write('  File "x.py", line 1, in handle\n    boom()\n')
    sys.stderr.write("RuntimeError: the handler broke\n")
    sys.stderr.buffer.write(b"bytes too\n")
    sys.stderr.writelines(["two ", "parts\n"])

    def die() -> None:
        raise KeyError("gone")

    thread = threading.Thread(target=die, name="source-x")
    thread.start()
    thread.join()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    messages = [r["message"] for r in records]
    assert "Exception occurred during processing of request" in messages
    assert "bytes too" in messages and "two parts" in messages
    broke = next(r for r in records if r["message"] == "RuntimeError: the handler broke")
    assert broke["level"] == "error" and 'File "x.py", line 1' in broke["exception"]
    died = next(r for r in records if r["message"] == "thread source-x failed")
    assert "KeyError: 'gone'" in died["exception"]
    logs.configure("INFO", "json", out)  # again: must not write into its own wrapper
    logging.getLogger("chworkers.test").info("still one line")
    assert json.loads(out.getvalue().splitlines()[-1])["message"] == "still one line"
