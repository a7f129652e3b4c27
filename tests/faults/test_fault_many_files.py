"""A one-shot file pipeline over more files than the process may open reads them all.

The file source opened every file its patterns matched at once, then read them one
after another: a backfill of more files than ``ulimit -n`` allows (1,024 is a common
default) failed to open the rest ("Too many open files", each an error), and starved
everything else the daemon opens (spool files, connections, pipes) meanwhile. Now a
one-shot source holds at most ``MAX_OPEN_FILES`` open; the others wait their turn in
order, and files read already are not matched again until all were read.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from daemonthread import daemon_config
from tomlfile import to_toml

from chworkers.embedded import EmbeddedClickHouse

FILES = 300
NOFILE = 128  # the daemon's own descriptors (sockets, pipes, spool) fit; the files do not


def _few_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.mark.timeout(180)
def test_more_files_than_descriptors_are_all_read_once(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(FILES):
        (data / f"f{i:04d}.json").write_text(f'{{"n":{2 * i}}}\n{{"n":{2 * i + 1}}}\n')
    conf = tmp_path / "c.toml"
    pipeline = {"source": "file", "paths": [f"{data}/*.json"], "follow": False, "max_rows": 100}
    cfg = daemon_config(tmp_path / "state", f"{endpoint.url}/{database}", pipeline)
    cfg["supervisor"]["workers"] = 1
    conf.write_text(to_toml(cfg))
    result = subprocess.run(
        [sys.executable, "-m", "chworkers", "run", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=150,
        preexec_fn=_few_descriptors,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Too many open files" not in result.stderr, result.stderr[-3000:]
    n = 2 * FILES
    assert ch_client.query("SELECT count(), uniqExact(n), sum(n) FROM ev").result_rows == [
        (n, n, n * (n - 1) // 2)
    ]
    positions = tmp_path / "state" / "positions" / "p.json"
    assert positions.exists()
