"""A one-shot file pipeline whose paths match no file says so.

`chworkers run` with `paths = ["/data/exprot/*.json"]` (a typo) read nothing, printed
"inserted 0 rows" and exited 0 without a word about the paths; `check` called it an
error, `run` did not even warn.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from daemonthread import Running, daemon_config

from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["JSONEachRow", "Native"])
def test_run_warns_when_no_file_matches(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    caplog: pytest.LogCaptureFixture,
    fmt: str,
) -> None:
    caplog.set_level(logging.INFO, logger="chworkers")
    pattern = str(tmp_path / "nowhere" / "*.data")
    data = daemon_config(
        tmp_path / "state",
        f"{endpoint.url}/{database}",
        {"source": "file", "paths": [pattern], "format": fmt},
    )
    running = Running(data)
    assert running.stop() == 0
    assert f"no file matches {pattern}: nothing to read (check the paths)" in caplog.text
