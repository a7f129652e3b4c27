"""The daemon's embedded ClickHouse child logs at the daemon's ``[log]`` level.

The child was started with ``--log-level INFO`` whatever ``[log] level`` said, so a
daemon told to log warnings only still had every request of its child logged in
``<state_dir>/clickhouse.log``; and its lines were text under ``format = "json"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from daemonthread import Running, daemon_config, lines


def run(tmp_path: Path, log: dict[str, str]) -> list[str]:
    tmp_path.mkdir()
    state = tmp_path / "state"
    data = tmp_path / "in.json"
    data.write_bytes(lines(0, 100))
    cfg = daemon_config(state, "embedded", {"source": "file", "paths": [str(data)]})
    cfg["log"] = log
    running = Running(cfg)
    assert running.stop() == 0
    return (state / "clickhouse.log").read_text().splitlines()


@pytest.mark.timeout(180)
def test_the_embedded_child_logs_at_the_daemons_level_and_format(tmp_path: Path) -> None:
    chatty = run(tmp_path / "info", {"level": "INFO", "format": "json"})
    assert chatty, "at INFO the child says it serves"
    records = [json.loads(line) for line in chatty]  # JSON like the daemon's own lines
    assert any(r["level"] == "info" for r in records), records

    quiet = run(tmp_path / "warning", {"level": "WARNING", "format": "text"})
    assert not [line for line in quiet if " INFO " in line or "INFO" in line.split()[:4]], quiet
