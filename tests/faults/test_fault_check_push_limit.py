"""`chworkers check` warns when a push `http.max_body_bytes` lets in could never be spooled.

A pushed body up to ``http.max_body_bytes`` (64 MiB by default) is read whole, and only
then refused 413 when it is more than the spool can ever hold (``[spool] max_bytes``, or
the spool's filesystem): a configuration whose spool is smaller than the push limit
made clients send large bodies for nothing, and nothing said so before they did.
"""

from __future__ import annotations

import socket
from pathlib import Path

from clirun import run_chworkers


def _check(tmp_path: Path, http: str) -> list[str]:
    with socket.socket() as closed:  # a ClickHouse that is not there: the check is quick
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
url = "http://127.0.0.1:{port}/default"
[spool]
max_bytes = "1MiB"
[http]
{http}
[[pipelines]]
name = "pushed"
source = "http"
table = "ev"
"""
    )
    result = run_chworkers("check", "-c", str(conf), timeout=120)
    assert result.returncode == 1, result.stderr  # only for the missing ClickHouse
    return result.stdout.splitlines()


def test_check_warns_of_a_push_limit_over_the_spool(tmp_path: Path) -> None:
    lines = _check(tmp_path, "")
    warned = [line for line in lines if line.startswith("http: WARNING")]
    assert len(warned) == 1, lines
    assert "max_body_bytes = 67,108,864" in warned[0]
    assert "the spool's limit ([spool] max_bytes) is 1,048,576 bytes" in warned[0]
    assert not (tmp_path / "state").exists()  # the check made nothing


def test_check_is_quiet_when_pushes_fit(tmp_path: Path) -> None:
    lines = _check(tmp_path, 'max_body_bytes = "512KiB"')
    assert not [line for line in lines if line.startswith("http:")], lines
