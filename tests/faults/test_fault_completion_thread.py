"""Batch completion (dead letters, fsync, spool removal) never runs on the supervisor's
loop thread: a slow completion must not stall supervision."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from chworkers.daemon.dispatch import Dispatcher
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch
from chworkers.embedded import EmbeddedClickHouse
from chworkers.workers.supervisor import Supervisor


def test_a_blocked_completion_does_not_stall_the_supervisor(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    ch_client.command(
        "CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    release = threading.Event()
    entered = threading.Event()
    threads: list[str] = []

    with Supervisor(f"{endpoint.url}/{database}", workers=1) as sup:

        def submit(batch: SpooledBatch) -> Future[Any]:
            return sup.insert_raw(
                batch.table,
                batch.payload,
                batch.format,
                deduplication_token=batch.token,
                split_bad_rows=True,
            )

        def on_done(batch: SpooledBatch, result: Any) -> None:
            threads.append(threading.current_thread().name)
            entered.set()
            release.wait(60)  # a slow disk, a lock held by a producer...

        dispatcher = Dispatcher(spool, submit, on_done=on_done)
        dispatcher.start()
        try:
            batch = spool.put("ev", b'{"n":1}\n{"n":2}\n', format="JSONEachRow", rows=2)
            dispatcher.add(batch)
            assert entered.wait(60)
            # While the completion is blocked, the supervisor still supervises: another
            # task runs and its future resolves.
            assert sup.call(sum, [1, 2, 3]).result(timeout=30) == 6
            assert sup.stats() is not None
            # And a completion that hangs shows in health.
            time.sleep(1.2)
            problems = dispatcher.thread_problems(stuck_after=1.0)
            assert len(problems) == 1 and problems[0].startswith("completing one inserted batch")
            # Exactly once: the batch leaves the spool only after its completion.
            assert spool.stats()["batches"] == 1
            release.set()
            assert dispatcher.wait_idle(30)
            assert spool.stats()["batches"] == 0
        finally:
            release.set()
            dispatcher.stop()
    assert threads == ["chworkers-complete"]
    assert ch_client.query("SELECT count() FROM ev").result_rows[0][0] == 2
