"""Asynchronous inserts from the daemon's call are batched together by the server.

The server queues an asynchronous insert under a key made of its statement and every
setting it changed. A batch that may be split by partition (``split_bad_rows``, the
daemon's call) was sent with its block size raised to its own row count
(``partitions.one_block``), so two batches of different sizes never shared a key: each
was flushed alone, one part per batch, the batching async_insert is chosen for undone.
An asynchronous insert needs no such setting (the server writes a flush as one block),
so it is sent without it.
"""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client
from waiting import wait_for

from chworkers import Supervisor
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)


def test_batches_of_different_sizes_share_a_flush(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    ch_client.command(
        "CREATE TABLE ev (k UInt64) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    settings = {
        **PipelineSettings(name="a", table="ev", async_insert=True).settings,
        "async_insert_use_adaptive_busy_timeout": 0,
        "async_insert_busy_timeout_max_ms": 2000,
    }
    sizes = (3, 5, 8)
    with Supervisor(f"{endpoint.url}/{database}", workers=len(sizes)) as sup:
        before = endpoint.stats()
        futures = [
            sup.insert_raw(
                "ev",
                b"".join(b'{"k":%d}\n' % (n * 100 + i) for i in range(n)),
                "JSONEachRow",
                settings=settings,
                deduplication_token=f"b{n}",
                split_bad_rows=True,  # the daemon's call
            )
            for n in sizes
        ]
        for future in futures:
            future.result(60)
        # The flush is counted once it has answered its clients (just after they hear).
        wait_for(
            lambda: endpoint.stats()["async_flushes_total"] > before["async_flushes_total"],
            timeout=30,
        )
        after = endpoint.stats()
    assert ch_client.command("SELECT count() FROM ev") == sum(sizes)
    assert after["async_inserts_total"] - before["async_inserts_total"] == len(sizes)
    assert after["async_flushes_total"] - before["async_flushes_total"] == 1
