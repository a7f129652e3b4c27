"""A batch whose spool file cannot be read back for a moment is tried again, not dropped.

The dispatcher reads each batch back from its file before it submits it. An error of
the read itself (EIO, EMFILE, here EISDIR) is not a corrupt batch: the batch used to be
taken for done, counted as confirmed and forgotten until the next start, with its rows
not in ClickHouse. It is a failed attempt, retried with the batch's backoff.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from waiting import wait_for

from chworkers import ConnectionPool
from chworkers.daemon.dispatch import Dispatcher
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch
from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(120)
def test_a_batch_that_cannot_be_read_back_for_a_moment_is_retried(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    ch_client.command(
        "CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    pool = ConnectionPool(f"{endpoint.url}/{database}", {"max_connections": 1})
    executor = ThreadPoolExecutor(1)
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    failures: list[BaseException] = []

    def submit(batch: SpooledBatch) -> Future[Any]:
        return executor.submit(
            pool.with_connection,
            lambda c: c.raw_insert(
                batch.table, batch.payload, fmt=batch.format, deduplication_token=batch.token
            ),
        )

    dispatcher = Dispatcher(
        spool,
        submit,
        SpoolSettings(retry_backoff_max=0.5),
        on_failure=lambda batch, error: failures.append(error),
        initial_backoff=0.2,
    )
    batch = spool.put("ev", b'{"n":1}\n{"n":2}\n', format="JSONEachRow", rows=2)
    assert batch.path is not None
    aside = batch.path.with_name("aside")
    batch.path.rename(aside)
    # Reading it back fails (EISDIR) while it is a link to a directory; putting the file
    # back is one rename over the link, so no retry can fall between two steps and find
    # no file at all (which is a batch that is gone, not a read that failed).
    batch.path.symlink_to(tmp_path, target_is_directory=True)
    dispatcher.start()
    try:
        dispatcher.add(batch)
        wait_for(lambda: bool(failures), timeout=30)
        assert dispatcher.backlog() == 1 and dispatcher.confirmed == 0
        aside.replace(batch.path)
        assert dispatcher.wait_idle(60)
        assert ch_client.command("SELECT count() FROM ev") == 2
        assert not batch.path.exists()
    finally:
        dispatcher.stop()
        executor.shutdown()
        pool.close()
        spool.close()
