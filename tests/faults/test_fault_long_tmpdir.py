"""A long $TMPDIR does not stop the daemon, a Supervisor or a leased ConnectionPool.

A Unix socket's path holds at most 107 bytes. multiprocess binds its fork server's
socket in a directory it makes under $TMPDIR ("pymp-XXXXXXXX/listener-XXXXXXXX"), so a
TMPDIR of about 75 bytes or more (a CI runner's per-job directory, pytest's numbered
ones) made `chworkers run` die at start with a traceback, ``OSError: AF_UNIX path too
long``, and every Supervisor fail to start its first worker. Now the fork server's
directory, like the lease broker's, goes to the first short enough directory of
$TMPDIR, $XDG_RUNTIME_DIR, /tmp, /var/tmp, /dev/shm; when there is none, a
ConfigError says to set TMPDIR to a shorter directory (exit code 3, no traceback).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import clickhouse_connect
import pytest
from clirun import run_chworkers
from daemonthread import daemon_config
from tomlfile import to_toml

from chworkers import sockdir
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ConfigError

pytestmark = pytest.mark.timeout(180)


def long_tmpdir(base: Path, size: int = 120) -> Path:
    """A directory under ``base`` whose path is ``size`` bytes long."""
    left = size - len(os.fsencode(base)) - 1
    assert left > 10, base
    deep = base / ("t" * (left // 2)) / ("u" * (left - left // 2 - 1))
    deep.mkdir(parents=True)
    assert len(os.fsencode(deep)) == size
    return deep


def test_run_with_a_long_tmpdir_inserts_everything(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    conf = tmp_path / "c.toml"
    pipeline = {"source": "stdin", "create": "n UInt64", "engine": "MergeTree ORDER BY n"}
    conf.write_text(
        to_toml(daemon_config(tmp_path / "state", f"{endpoint.url}/{database}", pipeline))
    )
    tmp = long_tmpdir(tmp_path)
    lines = "".join(f'{{"n":{i}}}\n' for i in range(500))
    result = run_chworkers("run", "-c", str(conf), env={"TMPDIR": str(tmp)}, input=lines)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "too long a path for a Unix socket" in result.stderr
    client = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port)
    try:
        rows = client.query(f"SELECT count(), sum(n) FROM {database}.ev").result_rows
        assert rows == [(500, 124750)]
    finally:
        client.close()
    assert list(tmp.iterdir()) == []  # nothing left in the long directory


SCRIPT = """
import sys

from chworkers import ConnectionPool, Supervisor
from chworkers.clickhouse.lease import LeaseBroker


def main() -> None:
    url, table = sys.argv[1], sys.argv[2]
    with Supervisor(url, workers=2, max_connections=1) as sup:
        sup.insert(table, [(1,), (2,)], column_names=["n"]).result(timeout=60)
        count = sup.submit(lambda conn, t: conn.command(f"SELECT count() FROM {t}"), table)
        print("supervisor", count.result(timeout=60))
    with LeaseBroker(1) as broker:
        broker.start()
        pool = ConnectionPool(url, {"max_connections": 1}, lease=broker.client("pool"))
        try:
            total = pool.with_connection(lambda conn: conn.command(f"SELECT sum(n) FROM {table}"))
        finally:
            pool.close()
        print("pool", total)


if __name__ == "__main__":
    main()
"""


def test_supervisor_and_a_leased_pool_with_a_long_tmpdir(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    client = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port)
    try:
        client.command(f"CREATE TABLE {database}.t (n UInt64) ENGINE = MergeTree ORDER BY n")
    finally:
        client.close()
    script = tmp_path / "long_tmpdir_main.py"
    script.write_text(SCRIPT)
    tmp = long_tmpdir(tmp_path)
    result = subprocess.run(
        [sys.executable, str(script), f"{endpoint.url}/{database}", "t"],
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:2] == ["supervisor 2", "pool 3"], result.stdout
    assert list(tmp.iterdir()) == []


def test_no_short_directory_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = long_tmpdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(sockdir, "FALLBACKS", (str(tmp_path / "missing"),))
    with pytest.raises(ConfigError, match="set TMPDIR to a shorter one") as caught:
        sockdir.short_parent(32, "fork server")
    assert caught.value.key == "TMPDIR"
    assert str(tmp) in str(caught.value)
