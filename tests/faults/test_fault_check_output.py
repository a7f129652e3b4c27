"""`chworkers check` against a ClickHouse that is down prints one line saying why.

Read as a user reads it, its output was cluttered: urllib3's "Retrying (Retry(total=0,
...)) after connection broken by NewConnectionError(...)" warning (clickhouse-connect
asks urllib3 for a retry of its own, behind the retry policy's back, which also tried a
failed connect twice, each with the whole connect_timeout), then the pool's "host marked
down" and "giving up" warnings, then the line `check` prints, which said the same again
inside "giving up after 1 attempt(s) (1 attempt(s) failed); last error: ...".
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from clirun import run_chworkers


def _check(tmp_path: Path, url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "c.toml"
    conf.write_text(f'[clickhouse]\nurl = "{url}"\n[[pipelines]]\nname = "p"\ntable = "ev"\n')
    return run_chworkers(*flags, "check", "-c", str(conf), timeout=120)


def _free_port() -> int:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return int(closed.getsockname()[1])


def test_check_of_a_dead_clickhouse_prints_one_line_and_no_warnings(tmp_path: Path) -> None:
    port = _free_port()
    result = _check(tmp_path, f"http://127.0.0.1:{port}/default")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[1] == (
        f"clickhouse: http://default@127.0.0.1:{port}/default DOES NOT ANSWER (1 attempt): "
        f"cannot connect to http://127.0.0.1:{port}: ConnectionRefusedError: [Errno 111] "
        "Connection refused"
    ), result
    assert result.stderr == "", result.stderr
    # The pool's own warnings are still there for whoever asks for them.
    debug = _check(tmp_path, f"http://127.0.0.1:{port}/default", "--log-level", "DEBUG")
    assert "marked down" in debug.stderr
    assert "Retrying (Retry(" not in debug.stderr
