"""The spool's memory tier (chworkers/daemon/memorytier.py): broker pipelines' batches
wait for their insert in memory, never on disk, bounded by ``memory_max_bytes``, through
the same batcher and dispatcher as every other batch."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from chclients import make_client
from prometheus_client import CollectorRegistry
from waiting import wait_for

from chworkers import ConnectionPool
from chworkers.daemon.batcher import Batcher
from chworkers.daemon.dispatch import Dispatcher
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ChworkersError, SpoolFullError
from chworkers.ops.metrics import Metrics

pytestmark = pytest.mark.timeout(120)


def test_memory_batches_never_touch_the_disk(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spool = Spool(tmp_path, metrics=Metrics(registry))
    kept = spool.put(
        "t", b"1\n2\n", format="CSV", rows=2, meta={"broker": {"ids": ["1-0"]}}, memory=True
    )
    on_disk = spool.put("t", b"3\n", format="CSV", rows=1)
    assert kept.path is None and kept.seq != on_disk.seq
    assert sorted(p.name for p in tmp_path.glob("*.batch")) == [on_disk.path.name]  # type: ignore[union-attr]
    # The dispatcher sees a description; the spool gives the whole batch back.
    assert spool.load(SpooledBatch(**{**kept.__dict__, "payload": b""})).payload == b"1\n2\n"
    stats = spool.stats()
    assert (stats["batches"], stats["memory_batches"]) == (2, 1)
    assert stats["bytes"] > stats["memory_bytes"] > len(b"1\n2\n")
    assert registry.get_sample_value("chworkers_spool_memory_bytes") == stats["memory_bytes"]
    assert registry.get_sample_value("chworkers_spool_batches") == 2
    # A restart finds only the batch on disk: the broker delivers the other one again.
    assert [b.seq for b in Spool(tmp_path).recover()] == [on_disk.seq]
    spool.remove(kept)
    assert spool.stats()["memory_batches"] == 0
    assert registry.get_sample_value("chworkers_spool_memory_bytes") == 0
    with pytest.raises(ChworkersError, match="neither on disk nor in memory"):
        spool.load(kept)


def test_the_memory_tier_waits_for_room_whatever_the_disk_policy(tmp_path: Path) -> None:
    spool = Spool(tmp_path, SpoolSettings(policy="reject", memory_max_bytes=4096))
    first = spool.put("t", b"x" * 3000, format="CSV", rows=1, memory=True)
    # The disk tier is not full: its batches still go in.
    spool.put("t", b"y" * 3000, format="CSV", rows=1)
    waited: list[float] = []

    def second() -> None:
        started = time.monotonic()
        spool.put("t", b"z" * 3000, format="CSV", rows=1, memory=True, timeout=30)
        waited.append(time.monotonic() - started)

    writer = threading.Thread(target=second)
    writer.start()
    wait_for(lambda: spool.problems(), 10, what="the writer waiting")
    (problem,) = spool.problems()
    assert "the memory for broker batches is full" in problem and "1 writers waiting" in problem
    assert writer.is_alive()  # waiting, not refused: policy "reject" is the disk's
    spool.remove(first)
    writer.join(10)
    assert waited and spool.stats()["memory_batches"] == 1
    with pytest.raises(SpoolFullError, match="memory for broker batches"):
        spool.put("t", b"w" * 3000, format="CSV", rows=1, memory=True, timeout=0.1)


def test_a_batch_larger_than_the_cap_is_let_into_an_empty_tier(tmp_path: Path) -> None:
    spool = Spool(tmp_path, SpoolSettings(memory_max_bytes=1024))
    batch = spool.put("t", b"x" * 5000, format="CSV", rows=1, memory=True, timeout=0.1)
    assert spool.stats()["memory_bytes"] > 5000
    spool.remove(batch)


def test_memory_batches_are_inserted_retried_and_then_forgotten(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    """Batcher -> memory tier -> dispatcher -> ClickHouse: a failed attempt keeps the
    batch (its payload too) for the next one; a confirmed one leaves memory."""
    client = make_client(endpoint, database=database)
    client.command("CREATE TABLE ev (n UInt32) ENGINE = MergeTree ORDER BY n")
    pool = ConnectionPool(f"{endpoint.url}/{database}", {"max_connections": 1})
    attempts: list[tuple[int, int]] = []

    def submit(batch: SpooledBatch) -> Future[Any]:
        attempts.append((batch.seq, len(batch.payload)))
        future: Future[Any] = Future()
        if len(attempts) == 1:
            future.set_exception(ChworkersError("the first attempt fails"))
        else:
            future.set_result(
                pool.with_connection(
                    lambda c: c.raw_insert(
                        batch.table,
                        batch.payload,
                        fmt=batch.format,
                        deduplication_token=batch.token,
                    )
                )
            )
        return future

    spool = Spool(tmp_path / "spool")
    dispatcher = Dispatcher(spool, submit, initial_backoff=0.05)
    batcher = Batcher(spool, dispatcher.add)
    dispatcher.start()
    try:
        payload = b"".join(b"%d\n" % i for i in range(1000))
        batcher.add("ev", payload, 1000, format="CSV", token="tok-1", memory=True, retry=True)
        assert dispatcher.wait_idle(30)
        assert not list((tmp_path / "spool").glob("*.batch"))
        assert [size for _seq, size in attempts] == [len(payload), len(payload)]
        assert spool.stats()["memory_batches"] == 0
        assert client.command("SELECT count() FROM ev") == 1000
    finally:
        batcher.close(5)
        dispatcher.stop()
        pool.close()
        client.close()
