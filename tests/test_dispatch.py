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
from faultproxy import FaultProxy

from chworkers import ConnectionPool
from chworkers.daemon.dispatch import Dispatcher, shard_of
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


class ShardInserter:
    """Inserts each spooled part into its shard's endpoint, from a thread pool."""

    def __init__(self, urls: list[str]) -> None:
        self.inserters = [Inserter(url) for url in urls]
        self.live = [0] * len(urls)
        self.peak = [0] * len(urls)
        self._lock = threading.Lock()

    def submit(self, batch: SpooledBatch) -> Future[Any]:
        shard = shard_of(batch)
        with self._lock:
            self.live[shard] += 1
            self.peak[shard] = max(self.peak[shard], self.live[shard])
        future = self.inserters[shard].submit(batch)
        future.add_done_callback(lambda f: self._done(shard))
        return future

    def _done(self, shard: int) -> None:
        with self._lock:
            self.live[shard] -= 1

    def close(self) -> None:
        for inserter in self.inserters:
            inserter.close()


@pytest.mark.timeout(120)
def test_a_shard_that_is_down_holds_back_only_its_own_batches(
    shard_endpoints: tuple[EmbeddedClickHouse, ...], shard_database: str, tmp_path: Path
) -> None:
    urls = [f"{ch.url}/{shard_database}" for ch in shard_endpoints]
    for url in urls:
        pool = ConnectionPool(url, {"max_connections": 1})
        pool.with_connection(
            lambda c: c.command(
                "CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n "
                "SETTINGS non_replicated_deduplication_window = 1000"
            )
        )
        pool.close()
    b = shard_endpoints[1]
    proxy = FaultProxy((b.host, b.port))
    urls[1] = f"{proxy.url}/{shard_database}"
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    inserter = ShardInserter(urls)
    failed: list[int] = []
    dispatcher = Dispatcher(
        spool,
        inserter.submit,
        SpoolSettings(max_in_flight=6, retry_backoff_max=0.5),
        shards=3,
        on_failure=lambda batch, error: failed.append(shard_of(batch)),
        initial_backoff=0.1,
    )
    dispatcher.start()

    def counts() -> list[int]:
        out = []
        for ch in shard_endpoints:
            pool = ConnectionPool(f"{ch.url}/{shard_database}", {"max_connections": 1})
            out.append(int(pool.with_connection(lambda c: c.command("SELECT count() FROM ev"))))
            pool.close()
        return out

    try:
        proxy.set("refuse")  # shard 1 is down from the start
        for i in range(30):
            payload = b"".join(b'{"n":%d}\n' % (i * 10 + j) for j in range(10))
            batch = spool.put("ev", payload, format="JSONEachRow", rows=10, meta={"shard": i % 3})
            dispatcher.add(batch)
        # The other shards take all of theirs while shard 1 is down.
        wait_for(lambda: dispatcher.shard_backlog()[0] == dispatcher.shard_backlog()[2] == 0)
        assert counts() == [100, 0, 100]
        assert dispatcher.shard_backlog()[1] == 10
        assert set(failed) == {1}
        assert inserter.peak[1] <= 2  # one probe at a time (once the first failed)
        proxy.set("pass")
        assert dispatcher.wait_idle(60)
        assert counts() == [100, 100, 100]
        assert spool.stats()["batches"] == 0
    finally:
        dispatcher.stop()
        inserter.close()
        proxy.close()


@pytest.mark.timeout(120)
def test_the_next_insert_does_not_wait_for_the_last_ones_completion(
    tmp_path: Path, endpoint: EmbeddedClickHouse
) -> None:
    """A batch being completed (its dead letters written, a broker's acknowledgement:
    on_done) frees its in-flight slot: with max_in_flight = 1, the next batch is inserted
    while the first one's completion still waits."""
    pool = ConnectionPool(endpoint.url, {"max_connections": 1})
    pool.with_connection(lambda c: c.command("DROP TABLE IF EXISTS next_insert_ev"))
    pool.with_connection(
        lambda c: c.command("CREATE TABLE next_insert_ev (n UInt32) ENGINE = MergeTree ORDER BY n")
    )
    release = threading.Event()
    done: list[int] = []

    def submit(batch: SpooledBatch) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(
            pool.with_connection(
                lambda c: c.raw_insert(
                    batch.table, batch.payload, fmt="CSV", deduplication_token=batch.token
                )
            )
        )
        return future

    def on_done(batch: SpooledBatch, result: Any) -> None:
        if not done:
            release.wait(30)  # the first completion waits (a slow broker)
        done.append(batch.seq)

    spool = Spool(tmp_path / "spool")
    dispatcher = Dispatcher(spool, submit, SpoolSettings(max_in_flight=1), on_done=on_done)
    dispatcher.start()
    try:
        for start in (0, 10):
            dispatcher.add(
                spool.put(
                    "next_insert_ev",
                    b"".join(b"%d\n" % i for i in range(start, start + 10)),
                    format="CSV",
                    rows=10,
                )
            )

        def count() -> int:
            return int(
                pool.with_connection(lambda c: c.command("SELECT count() FROM next_insert_ev"))
            )

        wait_for(lambda: count() == 20, what="the second insert while the first completes")
        assert not done
        release.set()
        assert dispatcher.wait_idle(30) and len(done) == 2
    finally:
        release.set()
        dispatcher.stop()
        pool.with_connection(lambda c: c.command("DROP TABLE IF EXISTS next_insert_ev"))
        pool.close()
