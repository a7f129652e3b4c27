"""Parquet files and a daemon run over them, for the columnar file source's tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from chclients import make_client

from chworkers.daemon import config
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse

SCHEMA = "n UInt64, s String"


def table(start: int, stop: int) -> pa.Table:
    return pa.table(
        {
            "n": pa.array(range(start, stop), pa.uint64()),
            "s": [f"row {i}" for i in range(start, stop)],
        }
    )


def write_parquet(path: Path, start: int, stop: int, row_group: int) -> Path:
    pq.write_table(table(start, stop), path, row_group_size=row_group)
    return path


def run_daemon(tmp_path: Path, url: str, pipelines: list[dict[str, Any]]) -> Daemon:
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "clickhouse": {
            "url": url,
            "pool": {"max_connections": 2, "retry": {"initial_backoff": 0.05, "max_backoff": 0.5}},
        },
        "supervisor": {"workers": 2},
        "metrics": {"port": 0},
        "spool": {"fsync": False, "retry_backoff_max": 1.0},
        "http": {"port": 0},
        "pipelines": pipelines,
    }
    daemon = Daemon(config.load(data=data, env={}))
    assert daemon.run() == 0
    return daemon


def pipeline(name: str, target: str, paths: list[Path], fmt: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "source": "file",
        "paths": [str(p) for p in paths],
        "format": fmt,
        "table": target,
        "create": SCHEMA,
        "engine": "MergeTree ORDER BY n",
        "settle": 0,
        "max_delay": "100ms",
        **kw,
    }


def totals(endpoint: EmbeddedClickHouse, target: str) -> tuple[int, int, int]:
    client = make_client(endpoint)
    try:
        row = client.query(f"SELECT count(), uniqExact(n), sum(n) FROM {target}").result_rows[0]
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        client.close()


def exact(n: int) -> tuple[int, int, int]:
    return n, n, n * (n - 1) // 2


def letters(tmp_path: Path, target: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in (tmp_path / "state" / "dead-letter" / target).glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]


def corrupt_row_group_1(path: Path) -> None:
    column = pq.ParquetFile(path).metadata.row_group(1).column(1)  # group 1's "s" column
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 20 : start + column.total_compressed_size - 5] = b"\xab" * (
        column.total_compressed_size - 25
    )
    path.write_bytes(bytes(data))
