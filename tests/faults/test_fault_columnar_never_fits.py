"""A columnar file (or a row group) larger than the spool can ever hold goes to the dead
letters with what to do, instead of wedging its pipeline.

A Native file is sent whole, and a Parquet row group is never cut: one larger than the
spool's filesystem was read into memory whole, then waited for room that could never
come (retried forever, "No space left on device"), and every file after it with it.
It is now refused before it is read: a dead letter naming the limit ("split the file",
"write it with smaller row groups"); the pipeline goes on with the next file.
"""

from __future__ import annotations

import json
from pathlib import Path

import chdb
import pytest
from chclients import make_client
from daemonthread import Running
from smalldisk import small_filesystem
from waiting import wait_for

from chworkers.daemon import config
from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(180)


def _native(rows: int, width: int) -> bytes:
    return bytes(
        chdb.query(
            f"SELECT number AS n, repeat('x', {width}) AS s FROM numbers({rows})", "Native"
        ).bytes()
    )


def test_a_native_file_larger_than_the_spool_disk_is_dead_lettered(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    files = tmp_path / "in"
    files.mkdir()
    (files / "a-big.native").write_bytes(_native(30_000, 200))  # ~6 MB: more than the disk
    (files / "b-small.native").write_bytes(_native(1_000, 10))
    state = tmp_path / "state"
    with small_filesystem(state, size_mib=4) as tmpfs:
        if not tmpfs:
            pytest.skip("no tmpfs can be mounted here")
        data = {
            "state_dir": str(state),
            "clickhouse": {"url": f"{endpoint.url}/{database}"},
            "supervisor": {"workers": 1},
            "metrics": {"port": 0},
            "http": {"port": 0},
            "spool": {"fsync": False},
            "pipelines": [
                {
                    "name": "cols",
                    "source": "file",
                    "follow": True,
                    "paths": [str(files / "*.native")],
                    "format": "Native",
                    "table": "ev",
                    "create": "n UInt64, s String",
                    "settle": 0,
                    "poll_interval": "50ms",
                }
            ],
        }
        running = Running(config.load(data=data, env={}))
        try:
            client = make_client(endpoint, database=database)

            def small_in() -> bool:
                try:
                    return int(client.command("SELECT count() FROM ev")) == 1_000
                except Exception:
                    return False

            wait_for(small_in, timeout=60, what="the file after the big one")
            letters = [
                json.loads(line)
                for p in (state / "dead-letter").rglob("*.jsonl")
                for line in p.read_text().splitlines()
            ]
        finally:
            running.stop()
    assert len(letters) == 1, letters
    message = letters[0]["error"]["message"]
    assert "more than the spool can ever hold" in message and "split the file" in message
    assert json.loads(letters[0]["record"])["file"].endswith("a-big.native")
