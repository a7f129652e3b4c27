"""SIGTERM while the daemon starts is a stop, not a death by signal.

The daemon installed its signal handlers only once everything was up, so a SIGTERM
during start-up (systemd stopping a unit that is still starting, a deploy) killed it
with -15 halfway: nothing was lost, but the exit said "killed", not "stopped".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clirun import run_until_signalled

pytestmark = pytest.mark.timeout(120)


def test_sigterm_during_start_up_drains_and_exits_0(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("".join(f'{{"id": {i}}}\n' for i in range(100)))
    (tmp_path / "c.toml").write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
url = "embedded"
[metrics]
port = 0
[supervisor]
workers = 1
[[pipelines]]
name = "p"
source = "file"
paths = ["{tmp_path / "in.jsonl"}"]
follow = true
table = "ev"
create = "id UInt64"
"""
    )
    lock = tmp_path / "state" / "daemon.lock"
    result, took = run_until_signalled(
        "run",
        "-c",
        str(tmp_path / "c.toml"),
        # The lock names the daemon once it holds the state directory: it is starting.
        ready=lambda proc: lock.exists() and f"pid {proc.pid}" in lock.read_text(),
        ready_timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert took < 60
