"""A stdin source whose pipe stays open and silent, then SIGTERM.

``producer | chworkers run`` with a producer that is alive but has nothing to say: the
source's thread sat in a blocking ``read`` of the pipe, so a SIGTERM waited out the whole
``graceful_timeout`` (30 s by default) for the intake to end, and the interpreter then
died at exit with "Fatal Python error: _enter_buffered_busy: could not acquire lock for
<_io.BufferedReader name='<stdin>'>" (a daemon thread inside the buffered reader). The
source now reads only when ``poll`` says a read will not block, so it sees the stop.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import clickhouse_connect
import pytest
from daemonthread import daemon_config
from tomlfile import to_toml
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(240)
def test_sigterm_stops_a_daemon_whose_stdin_stays_open(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    conf = tmp_path / "c.toml"
    cfg = daemon_config(tmp_path / "state", f"{endpoint.url}/{database}", {"source": "stdin"})
    cfg["supervisor"]["workers"] = 1
    cfg["supervisor"]["graceful_timeout"] = 120.0  # the old code waited all of it
    conf.write_text(to_toml(cfg))
    errors = (tmp_path / "stderr").open("wb")
    proc = subprocess.Popen(  # output to a file: communicate() would close the pipe
        [sys.executable, "-m", "chworkers", "run", "-c", str(conf)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=errors,
    )
    client = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port)
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"".join(b'{"n":%d,"s":"x"}\n' % i for i in range(500)))
        proc.stdin.flush()  # and the pipe stays open: the producer is alive and silent

        def landed() -> bool:
            assert proc.poll() is None
            try:
                return client.command(f"SELECT count() FROM {database}.ev") == 500
            except Exception:  # the table is not created yet
                return False

        wait_for(landed, timeout=120, what="the 500 rows written before the signal")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=150)  # with its standard input still open
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        errors.close()
    text = (tmp_path / "stderr").read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "Fatal Python error" not in text, text[-3000:]
    # Well inside the 120 s graceful timeout the old code waited out (it takes ~2 s).
    assert took < 60, (took, text[-3000:])
    assert client.command(f"SELECT count() FROM {database}.ev") == 500
