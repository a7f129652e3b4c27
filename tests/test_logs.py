from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from chworkers import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


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
