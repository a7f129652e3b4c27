"""The file source for whole columnar files: Parquet, Arrow IPC, Native (issue 15 item 6).

Against the embedded engine, through the daemon's own path (batcher, spool, dispatcher,
workers, dead letters): exact counts, cutting on row groups, a corrupt file, a file
whose data ClickHouse refuses, a rerun (checkpoints) and a replay that lost its
checkpoints (the chunks' tokens).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import chdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chclients import make_client
from parquetfiles import (
    SCHEMA,
    corrupt_row_group_1,
    exact,
    letters,
    pipeline,
    run_daemon,
    table,
    totals,
    write_parquet,
)
from waiting import wait_for

from chworkers.daemon import config
from chworkers.daemon.filechunks import file_identity, layout, plan
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ConfigError

pytestmark = pytest.mark.timeout(180)


def test_parquet_is_cut_on_row_groups_and_inserted_exactly(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    files = [
        write_parquet(tmp_path / "a.parquet", 0, 10_000, 2_000),
        write_parquet(tmp_path / "b.parquet", 10_000, 13_000, 1_000),
    ]
    target = f"{database}.ev"
    # a.parquet: row groups of 2000 -> chunks of 4000, 4000, 2000 rows (re-encoded);
    # b.parquet fits the limits whole: sent as it is, one batch.
    daemon = run_daemon(
        tmp_path,
        endpoint.url,
        [pipeline("pq", target, [tmp_path / "*.parquet"], "Parquet", max_rows=4_500)],
    )
    assert totals(endpoint, target) == exact(13_000)
    assert daemon.totals.batches == 4
    assert daemon.totals.rows_inserted == 13_000
    # A second run reads nothing again: the files' progress was saved.
    again = run_daemon(
        tmp_path,
        endpoint.url,
        [pipeline("pq", target, [tmp_path / "*.parquet"], "Parquet", max_rows=4_500)],
    )
    assert again.totals.batches == 0
    assert totals(endpoint, target) == exact(13_000)
    del files


def test_a_replay_without_checkpoints_is_dropped_by_the_chunk_tokens(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    write_parquet(tmp_path / "a.parquet", 0, 6_000, 1_000)
    target = f"{database}.ev"
    p = pipeline("pq", target, [tmp_path / "a.parquet"], "Parquet", max_rows=2_000)
    run_daemon(tmp_path, endpoint.url, [p])
    shutil.rmtree(tmp_path / "state" / "positions")  # as if the saved progress were lost
    again = run_daemon(tmp_path, endpoint.url, [p])
    assert again.totals.batches == 3  # read and sent again...
    assert totals(endpoint, target) == exact(6_000)  # ...and dropped by ClickHouse


@pytest.mark.timeout(300)
def test_kill_9_mid_file_then_restart_inserts_every_row_once(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    """A Parquet file of 200 row groups, one batch each; the daemon is SIGKILLed mid-file
    and run again: every row is in ClickHouse exactly once."""
    n = 100_000
    write_parquet(tmp_path / "big.parquet", 0, n, 500)
    target = f"{database}.ev"
    conf = tmp_path / "chworkers.toml"
    conf.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
url = "{endpoint.url}"
[metrics]
port = 0
[spool]
fsync = false
[[pipelines]]
name = "p"
source = "file"
paths = ["{tmp_path / "big.parquet"}"]
format = "Parquet"
settle = "0s"
table = "{target}"
create = "{SCHEMA}"
engine = "MergeTree ORDER BY n"
max_rows = 500
"""
    )
    cmd = [sys.executable, "-m", "chworkers", "run", "-c", str(conf)]

    def inserted() -> int:
        try:
            return totals(endpoint, target)[0]
        except Exception:
            return 0

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: inserted() >= 20_000 or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert inserted() < n  # killed mid-file
    again = subprocess.run(cmd, capture_output=True, timeout=240)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    assert totals(endpoint, target) == exact(n)


def test_arrow_file_arrow_stream_and_native_files(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    data = table(0, 5_000)
    with (
        pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, data.schema) as writer,
    ):
        for batch in data.to_batches(max_chunksize=700):
            writer.write_batch(batch)
    with (
        pa.OSFile(str(tmp_path / "a.arrows"), "wb") as sink,
        pa.ipc.new_stream(sink, data.schema) as writer,
    ):
        for batch in data.to_batches(max_chunksize=900):
            writer.write_batch(batch)
    native = chdb.query(
        "SELECT number AS n, concat('row ', toString(number)) AS s FROM numbers(5000)", "Native"
    )
    (tmp_path / "a.native").write_bytes(native.bytes())
    pipelines = [
        pipeline("arrow", f"{database}.a", [tmp_path / "*.arrow"], "Arrow", max_rows=2_000),
        pipeline("stream", f"{database}.b", [tmp_path / "*.arrows"], "ArrowStream", max_rows=2_000),
        pipeline("native", f"{database}.c", [tmp_path / "*.native"], "Native"),
    ]
    daemon = run_daemon(tmp_path, endpoint.url, pipelines)
    for target in ("a", "b", "c"):
        assert totals(endpoint, f"{database}.{target}") == exact(5_000), target
    # Arrow: record batches of 700 -> chunks of 1400, 1400, 1400, 800 rows; ArrowStream:
    # of 900 -> 1800, 1800, 1400; Native: the file whole.
    assert daemon.totals.batches == 4 + 3 + 1


def test_a_corrupt_file_goes_to_the_dead_letters_and_the_rest_goes_in(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    write_parquet(tmp_path / "a.parquet", 0, 3_000, 1_000)
    good = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "b.parquet").write_bytes(good[: len(good) // 2])  # truncated mid-write
    (tmp_path / "d.parquet").write_bytes(b"")  # empty: not a Parquet file either
    # Readable by pyarrow, but its "n" column cannot become a UInt64: ClickHouse refuses it.
    pq.write_table(pa.table({"n": ["x", "y"], "s": ["a", "b"]}), tmp_path / "c.parquet")
    target = f"{database}.ev"
    daemon = run_daemon(
        tmp_path, endpoint.url, [pipeline("pq", target, [tmp_path / "*.parquet"], "Parquet")]
    )
    assert totals(endpoint, target) == exact(3_000)
    found = letters(tmp_path, target)
    assert len(found) == 3, found
    unreadable = sorted(
        (e for e in found if e["reason"] == "unreadable file"), key=lambda e: e["record"]
    )
    assert [json.loads(e["record"]) for e in unreadable] == [
        {"file": str(tmp_path / "b.parquet"), "rows": "all"},
        {"file": str(tmp_path / "d.parquet"), "rows": "all"},
    ]
    assert all("not a readable Parquet file" in e["error"]["message"] for e in unreadable)
    refused = [e for e in found if e["reason"] == "rejected"]
    assert refused[0]["error"]["code"]  # ClickHouse's error, the batch whole in base64
    assert refused[0]["record_base64"]
    # c's two rows, and each unreadable file (its rows unknown) as one.
    assert daemon.totals.dead_letters == 2 + 1 + 1


def test_a_corrupt_row_group_goes_to_the_dead_letters_by_its_rows(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    path = write_parquet(tmp_path / "a.parquet", 0, 3_000, 1_000)
    corrupt_row_group_1(path)
    target = f"{database}.ev"
    run_daemon(
        tmp_path,
        endpoint.url,
        [pipeline("pq", target, [path], "Parquet", max_rows=1_000)],
    )
    client = make_client(endpoint)
    try:
        got = client.query(f"SELECT min(n), max(n), count() FROM {target} WHERE n >= 1000")
        assert got.result_rows[0] == (2000, 2999, 1000)  # groups 0 and 2 are in
    finally:
        client.close()
    assert totals(endpoint, target)[0] == 2_000
    (letter,) = letters(tmp_path, target)
    assert letter["reason"] == "unreadable file"
    assert json.loads(letter["record"]) == {"file": str(path), "rows": "1000-2000"}
    assert "row groups 1" in letter["error"]["message"]


def test_files_being_written_wait_until_they_settle(tmp_path: Path) -> None:
    from chworkers.daemon.checkpoints import Checkpoints
    from chworkers.daemon.columnsource import ColumnarFileSource

    write_parquet(tmp_path / "a.parquet", 0, 100, 100)
    (tmp_path / ".b.parquet").write_bytes(b"PAR1 half written")  # renamed in place later
    source = ColumnarFileSource(
        [str(tmp_path / "*.parquet"), str(tmp_path / ".*.parquet")],
        checkpoints=Checkpoints(tmp_path / "positions"),
        settle=60,
        name="p",
        table="ev",
        format="Parquet",
        batcher=None,  # type: ignore[arg-type]  # nothing is read: nothing settled
    )
    assert source._candidates() == [str(tmp_path / "a.parquet")]
    assert source._settled(str(tmp_path / "a.parquet")) is None  # seen now: not settled


def test_chunks_are_the_same_for_a_replay_and_on_unit_boundaries(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "a.parquet", 0, 10_000, 1_500)
    file = layout(str(path), "Parquet")
    assert [u[0] for u in file.units] == [1500] * 6 + [1000]
    chunks = plan(file, start_row=0, max_rows=4_000, max_bytes=1 << 30)
    assert [(c.first_row, c.rows) for c in chunks] == [(0, 3000), (3000, 3000), (6000, 4000)]
    resumed = plan(file, start_row=3000, max_rows=4_000, max_bytes=1 << 30)
    assert resumed == chunks[1:]
    assert file_identity(str(path)) == file_identity(str(path))
    whole = plan(file, start_row=0, max_rows=100_000, max_bytes=1 << 30)
    assert len(whole) == 1 and whole[0].whole


def test_columnar_formats_are_refused_where_they_cannot_work() -> None:
    base = {"name": "p", "table": "ev", "format": "Parquet"}
    with pytest.raises(ConfigError, match="needs source = 'file'"):
        config.load(data={"pipelines": [{**base, "source": "http"}]}, env={})
    with pytest.raises(ConfigError, match="sharding_key is not supported"):
        config.load(
            data={"pipelines": [{**base, "source": "file", "paths": ["x"], "sharding_key": "n"}]},
            env={},
        )
