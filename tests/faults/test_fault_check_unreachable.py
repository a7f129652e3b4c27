"""`chworkers check` against a ClickHouse that does not answer says so at once.

It used to go through the pool's whole retry policy (8 attempts and up to 5 minutes with
the example config's settings) before dying with the bare retry error, while the same
check of a sharded cluster answered "DOES NOT ANSWER" after one attempt per replica.
"""

from __future__ import annotations

import socket
from pathlib import Path

from clirun import run_chworkers


def test_check_says_clickhouse_does_not_answer_after_one_attempt(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}"
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"""
[clickhouse]
url = "{down}/default"
[clickhouse.pool.retry]
max_attempts = 4
initial_backoff = "50ms"
max_backoff = "100ms"
[[pipelines]]
name = "p"
table = "ev"
"""
    )
    result = run_chworkers("check", "-c", str(conf), timeout=120)
    port = down.rsplit(":", 1)[1]
    assert f":{port}/default DOES NOT ANSWER (1 attempt): " in result.stdout, result
    assert "Connection refused" in result.stdout
    assert "4 attempt(s)" not in result.stdout + result.stderr
    assert result.returncode == 1
