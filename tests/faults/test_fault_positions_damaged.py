"""A damaged positions snapshot stops the start; it is not taken for no positions.

A pipeline's positions snapshot that did not parse (damaged on disk, edited by hand) was
logged as an ERROR and the daemon started over: every file of the pipeline read again
from its start, every row of them inserted a second time, and nothing but a log line
said so. Now ``chworkers run`` exits 3 (a configuration error: restarting cannot fix it)
with a message naming the file and how to go on, and inserts nothing; with the file
moved away, as the message says, the pipeline is read from its start.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from clirun import run_chworkers
from daemonthread import daemon_config
from tomlfile import to_toml

from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(240)
@pytest.mark.parametrize("damage", [b'{"/x.log": {"dev": 1, "ino"', b"[]", b""])
def test_a_damaged_positions_snapshot_stops_the_start(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    ch_client: Client,
    damage: bytes,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.log").write_bytes(b"".join(b'{"n":%d}\n' % n for n in range(5)))
    state = tmp_path / "state"
    cfg = daemon_config(
        state, f"{endpoint.url}/{database}", {"source": "file", "paths": [f"{data}/*.log"]}
    )
    cfg["supervisor"]["workers"] = 1
    conf = tmp_path / "c.toml"
    conf.write_text(to_toml(cfg))
    first = run_chworkers("run", "-c", str(conf), timeout=120, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert ch_client.command("SELECT count() FROM ev") == 5, first.stderr

    snapshot = state / "positions" / "p.json"
    snapshot.write_bytes(damage)
    second = run_chworkers("run", "-c", str(conf), timeout=120, cwd=tmp_path)
    assert second.returncode == 3, second.stderr
    assert "Traceback" not in second.stderr, second.stderr
    said = second.stderr
    assert f"the positions file {snapshot} of pipeline 'p' is damaged" in said, said
    assert "Restore it from a backup" in said and "move it away" in said, said
    assert ch_client.command("SELECT count() FROM ev") == 5  # nothing read twice

    snapshot.rename(tmp_path / "p.json.damaged")  # as the message says: start over
    third = run_chworkers("run", "-c", str(conf), timeout=120, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert ch_client.command("SELECT count() FROM ev") == 10
