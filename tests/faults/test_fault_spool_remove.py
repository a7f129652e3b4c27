"""A confirmed batch whose spool file cannot be removed is tried again, not lost track of.

The batch was inserted, but its file stays in the spool (here: the spool's filesystem
turned read-only). Left as it was, the batch sat "in flight" for good: a dispatcher slot
gone, the backlog never drained, a stop waited out its whole timeout, and the file was
replayed only at the next start, maybe after the table's deduplication window had moved
on. Tried again, it is inserted again (dropped by its token) and removed once it can be.
"""

from __future__ import annotations

import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from smalldisk import small_filesystem

from chworkers import ConnectionPool
from chworkers.daemon.dispatch import Dispatcher
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch
from chworkers.embedded import EmbeddedClickHouse


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, timeout=30)


@pytest.mark.timeout(120)
def test_a_batch_whose_file_cannot_be_removed_is_retried_until_it_is(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    ch_client.command(
        "CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    disk = tmp_path / "disk"
    with small_filesystem(disk) as tmpfs:
        if not tmpfs:
            pytest.skip("needs a tmpfs to turn read-only (root)")
        pool = ConnectionPool(f"{endpoint.url}/{database}", {"max_connections": 1})
        executor = ThreadPoolExecutor(1)
        spool = Spool(disk / "spool", SpoolSettings(fsync=False))
        done = threading.Event()
        completions = 0

        def submit(batch: SpooledBatch) -> Future[Any]:
            return executor.submit(
                pool.with_connection,
                lambda c: c.raw_insert(
                    batch.table, batch.payload, fmt=batch.format, deduplication_token=batch.token
                ),
            )

        def on_done(batch: SpooledBatch, result: Any) -> None:
            nonlocal completions
            completions += 1
            if completions == 1:
                remount(disk, "ro")  # the removal that follows fails (EROFS)
                done.set()

        dispatcher = Dispatcher(
            spool,
            submit,
            SpoolSettings(retry_backoff_max=0.5),
            on_done=on_done,
            initial_backoff=0.2,
        )
        dispatcher.start()
        try:
            batch = spool.put("ev", b'{"n":1}\n{"n":2}\n', format="JSONEachRow", rows=2)
            dispatcher.add(batch)
            assert done.wait(60)
            assert not dispatcher.wait_idle(1.0)  # the file is still there
            remount(disk, "rw")
            assert dispatcher.wait_idle(60), "the batch was never tried again"
            assert list((disk / "spool").glob("*.batch")) == []
            assert completions >= 2
            assert ch_client.command("SELECT count() FROM ev") == 2  # once, by its token
        finally:
            remount(disk, "rw")
            dispatcher.stop()
            executor.shutdown()
            pool.close()
