"""Reading files once into a spool by reference, as the daemon's file source does (for
tests of batches spooled by reference)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from daemonthread import daemon_config, lines
from faultproxy import FaultProxy

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.filesource import FileSource
from chworkers.daemon.spool import Spool, SpooledBatch


def read_by_reference(
    spool: Spool,
    files: list[Path],
    positions: Path,
    *,
    max_rows: int = 1000,
    follow_for: float | None = None,
    **source: Any,
) -> list[SpooledBatch]:
    """Read ``files`` once (JSONEachRow, into table ``events``) by reference into
    ``spool``; the batches spooled, oldest first. ``follow_for``: tail them instead,
    stopping after that many seconds. ``source``: more of FileSource's arguments
    (read_size, max_record_bytes, on_error, transform...)."""
    batches: list[SpooledBatch] = []
    batcher = Batcher(spool, batches.append)
    stop = threading.Event()
    reader = FileSource(
        [str(f) for f in files],
        checkpoints=Checkpoints(positions),
        name="logs",
        table="events",
        format="JSONEachRow",
        batcher=batcher,
        limits=BatchLimits(max_rows=max_rows, max_delay=60),
        follow=follow_for is not None,
        by_reference=True,
        **source,
    )
    if follow_for is not None:
        threading.Timer(follow_for, stop.set).start()
    reader.run(stop)
    batcher.close()
    return sorted(batches, key=lambda b: b.seq)


def file_behind_an_outage(
    tmp_path: Path, database: str, ch_client: Client, fault_proxy: FaultProxy, **proxy: Any
) -> tuple[Path, dict[str, Any]]:
    """Table ``ev`` made (with a deduplication window), 5,000 lines in ``in.json``
    (``daemonthread.lines(0, 5000)``) and ClickHouse behind ``fault_proxy`` set to
    ``proxy`` (a reset by default: unreachable): the file, and the configuration of a
    daemon reading it once, 1,000 rows a batch, through the proxy."""
    ch_client.command(
        "CREATE TABLE ev (n UInt64, s String) ENGINE = MergeTree ORDER BY n "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    data = tmp_path / "in.json"
    data.write_bytes(lines(0, 5000))
    fault_proxy.set(**(proxy or {"mode": "reset"}))
    cfg = daemon_config(
        tmp_path / "state",
        f"{fault_proxy.url}/{database}",
        {"source": "file", "paths": [str(data)], "max_rows": 1000},
    )
    cfg["clickhouse"]["startup_wait"] = 1.0  # ClickHouse is down: ready after 1 s, not 15
    return data, cfg
