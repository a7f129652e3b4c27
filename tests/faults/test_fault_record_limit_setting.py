"""A pipeline's longest record is a setting (``max_record_bytes``, 16 MiB by default).

The limit was a constant: a source of records longer than 16 MiB (large JSON documents)
had every one of them skipped, and one that wanted a tighter bound on the memory a
record may take could not have it. It is a pipeline setting now, for file, stdin and
broker sources.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from clirun import run_chworkers
from daemonthread import daemon_config
from tomlfile import to_toml

from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(180)
def test_a_pipeline_with_a_lower_record_limit_skips_longer_records(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    conf = tmp_path / "c.toml"
    pipeline = {"source": "stdin", "max_record_bytes": "2KiB"}
    conf.write_text(
        to_toml(daemon_config(tmp_path / "state", f"{endpoint.url}/{database}", pipeline))
    )
    small = "".join(f'{{"n":{i},"s":"ok"}}\n' for i in range(100))
    long = '{"n":-1,"s":"' + "x" * 5000 + '"}\n'
    result = run_chworkers("run", "-c", str(conf), input=small + long + small, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("it was skipped") == 1, result.stderr[-3000:]
    assert "(limit 2048)" in result.stderr
    assert ch_client.query("SELECT count(), min(n) FROM ev").result_rows == [(200, 0)]
