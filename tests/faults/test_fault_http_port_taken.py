"""A push port that is taken is a configuration error naming it, not a traceback.

`chworkers run` with `[http] port` held by another process died with a Python traceback
ending in `OSError: [Errno 98] Address already in use` and exit code 1, which systemd
restarts in a loop; the metrics port in the same situation was already a clear
configuration error (exit code 3).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from clirun import run_chworkers
from daemonthread import push_config
from tomlfile import to_toml

from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(120)
def test_run_with_the_push_port_taken(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "c.toml"
        url = f"{endpoint.url}/{database}"
        conf.write_text(to_toml(push_config(tmp_path / "state", url, http={"port": port})))
        proc = run_chworkers("run", "-c", str(conf), timeout=110)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        f"chworkers: configuration error: cannot listen for pushes on 127.0.0.1:{port}: "
        "Address already in use"
    ) in proc.stderr
