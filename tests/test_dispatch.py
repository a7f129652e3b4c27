"""The dispatcher against a real endpoint, including a real outage."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import waiting

from chworkers import ConnectionPool
from chworkers.daemon.dispatch import Dispatcher
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch
from chworkers.embedded import EmbeddedClickHouse


class Inserter:
    """Inserts spooled batches with a real pool from a thread pool (what workers do)."""

    def __init__(self, url: str) -> None:
        self.pool = ConnectionPool(
            url, {"max_connections": 2, "retry": {"max_attempts": 1}, "acquire_timeout": 5}
        )
        self.executor = ThreadPoolExecutor(2)
        self.peak_payloads = 0
        self._live = 0
        self._lock = threading.Lock()

    def submit(self, batch: SpooledBatch) -> Future[Any]:
        with self._lock:
            self._live += 1
            self.peak_payloads = max(self.peak_payloads, self._live)
        return self.executor.submit(self._insert, batch)

    def _insert(self, batch: SpooledBatch) -> int:
        try:
            return int(
                self.pool.with_connection(
                    lambda c: (
                        c.raw_insert(
                            batch.table,
                            batch.payload,
                            fmt=batch.format,
                            deduplication_token=batch.token,
                        ).written_rows
                    )
                )
            )
        finally:
            with self._lock:
                self._live -= 1

    def close(self) -> None:
        self.executor.shutdown()
        self.pool.close()


@pytest.fixture
def own_endpoint(tmp_path: Path) -> Iterator[EmbeddedClickHouse]:
    ch = EmbeddedClickHouse(tmp_path / "ch")
    ch.start()
    yield ch
    ch.close()


def count(ch: EmbeddedClickHouse) -> int:
    pool = ConnectionPool(ch.url, {"max_connections": 1})
    try:
        return int(pool.with_connection(lambda c: c.command("SELECT count() FROM ev")))
    finally:
        pool.close()


wait_for = functools.partial(waiting.wait_for, timeout=30.0, interval=0.05)


@pytest.mark.timeout(120)
def test_outage_spools_then_drains_exactly_once(
    own_endpoint: EmbeddedClickHouse, tmp_path: Path
) -> None:
    ch = own_endpoint
    pool = ConnectionPool(ch.url, {"max_connections": 1})
    pool.with_connection(
        lambda c: c.command(
            "CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n "
            "SETTINGS non_replicated_deduplication_window = 1000",
            idempotent=True,
        )
    )
    pool.close()
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    inserter = Inserter(ch.url)
    failures: list[BaseException] = []
    results: list[int] = []
    dispatcher = Dispatcher(
        spool,
        inserter.submit,
        SpoolSettings(max_in_flight=3, retry_backoff_max=0.5),
        on_done=lambda b, rows: results.append(rows),
        on_failure=lambda b, e: failures.append(e),
        initial_backoff=0.1,
    )
    dispatcher.start()

    def put(i: int) -> None:
        payload = b"".join(b'{"n":%d}\n' % (i * 100 + j) for j in range(100))
        dispatcher.add(spool.put("ev", payload, format="JSONEachRow", rows=100))

    try:
        for i in range(5):
            put(i)
        wait_for(lambda: dispatcher.backlog() == 0)
        assert count(ch) == 500

        ch.kill()  # outage: batches stay in the spool, on disk
        for i in range(5, 30):
            put(i)
        wait_for(lambda: len(failures) >= 3)
        assert spool.stats()["batches"] >= 22
        assert inserter.peak_payloads <= 3  # memory holds only what is in flight

        ch.start()
        dispatcher.retry_now()
        assert dispatcher.wait_idle(60)
        assert count(ch) == 3000
        assert spool.stats()["batches"] == 0
        assert sum(results) == 3000
    finally:
        dispatcher.stop()
        inserter.close()


def test_stop_leaves_unconfirmed_batches_in_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    never: Future[Any] = Future()
    dispatcher = Dispatcher(spool, lambda batch: never, SpoolSettings(max_in_flight=1))
    dispatcher.start()
    for i in range(3):
        dispatcher.add(spool.put("t", b"%d\n" % i, format="CSV", rows=1))
    assert not dispatcher.wait_idle(0.2)
    dispatcher.stop()
    assert [b.payload for b in Spool(tmp_path / "spool").recover()] == [b"0\n", b"1\n", b"2\n"]
