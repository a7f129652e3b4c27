"""A Parquet file whose metadata reads but one of whose row groups is corrupt, small
enough to be sent whole: ClickHouse refuses it with CANNOT_DECOMPRESS (271), which was
not taken for a data error, so the batch was held in the spool and retried for good
instead of going to the dead letters.

Dead-lettered whole, the batch counted as one row in the dead letters' counts (the
summary's "dead letters", ``chworkers_dead_letter_rows_total``): it counts its rows."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from parquetfiles import corrupt_row_group_1, letters, pipeline, run_daemon, totals, write_parquet

from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)


def test_a_corrupt_file_sent_whole_is_dead_lettered_whole_by_clickhouse(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    path = write_parquet(tmp_path / "a.parquet", 0, 3_000, 1_000)
    corrupt_row_group_1(path)  # the metadata is fine: the file fits the limits, sent whole
    target = f"{database}.ev"
    daemon = run_daemon(tmp_path, endpoint.url, [pipeline("pq", target, [path], "Parquet")])
    assert totals(endpoint, target)[0] == 0
    (letter,) = letters(tmp_path, target)
    assert letter["reason"] == "rejected"
    assert letter["error"]["code"] == 271  # CANNOT_DECOMPRESS: not retried for good
    assert base64.b64decode(letter["record_base64"]) == path.read_bytes()
    assert letter["rows"] == 3_000
    assert daemon.totals.dead_letters == 3_000 and daemon.totals.failures == 0
    dead = daemon.metrics.dead_letter_rows.labels(table=target)._value.get()
    assert dead == 3_000
    assert "dead letters: 3,000 (in " in daemon.summary()
