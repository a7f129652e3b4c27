"""A batch of several blocks refused for too many partitions is not inserted twice.

ClickHouse cuts an INSERT of more than ``min_insert_block_size_rows`` rows (about a
million by default; lowered here so that a few thousand rows make several blocks) into
blocks and writes each as it goes. When a later block spanned more partitions than
``max_partitions_per_insert_block``, the blocks before it were in the table already,
under the batch's token, and the split by partition then inserted all the batch's rows
again under the groups' tokens: 8,960 rows for 6,000. A request that may be split is
sent as one block now, refused whole; and a replay of the batch (recovered from the
spool after a crash) splits the same way, every group dropped by its token.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from daemonthread import daemon_config

from chworkers.daemon import config
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.service import Daemon
from chworkers.daemon.spool import Spool
from chworkers.embedded import EmbeddedClickHouse

# The first 3,000 rows span 50 partitions (three blocks of 1,000 that fit the limit of
# 100); the next 3,000 span 300 (the fourth block is refused).
KEYS = [i % 50 for i in range(3000)] + list(range(3000, 6000))
SMALL_BLOCKS = [
    "max_partitions_per_insert_block=100",
    "max_insert_block_size=1000",
    "min_insert_block_size_rows=1000",
    "min_insert_block_size_bytes=0",
]


def run(state: Path, url: str) -> Daemon:
    cfg = daemon_config(
        state,
        url,
        {
            "source": "file",
            "paths": [str(state / "none.json")],  # nothing to read: the spool's batch only
            "insert_settings": SMALL_BLOCKS,
            "max_rows": 10_000,
        },
    )
    daemon = Daemon(config.load(data=cfg, env={}))
    assert daemon.run() == 0
    return daemon


@pytest.mark.timeout(120)
def test_a_multi_block_batch_split_by_partition_lands_exactly_once_and_replays_the_same(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    ch_client.command(
        "CREATE TABLE ev (n UInt64, s String) ENGINE = MergeTree PARTITION BY n % 300 "
        "ORDER BY n SETTINGS non_replicated_deduplication_window = 1000"
    )
    state = tmp_path / "state"
    # Over a MiB, so the endpoint streams it into chDB, which writes block by block (a
    # smaller body goes in as one query, whose refusal leaves nothing: the duplicates
    # this test is about could not happen).
    pad = b"x" * 200
    payload = b"".join(b'{"n":%d,"s":"r%d%s"}\n' % (k, i, pad) for i, k in enumerate(KEYS))
    assert len(payload) > 1 << 20
    settings = dict(setting.split("=") for setting in SMALL_BLOCKS)  # the batch's, as spooled
    Spool(state / "spool", SpoolSettings(fsync=False)).put(
        "ev", payload, format="JSONEachRow", rows=len(KEYS), pipeline="p", settings=settings
    )
    saved = tmp_path / "spool-before"
    shutil.copytree(state / "spool", saved)
    url = f"{endpoint.url}/{database}"

    def landed() -> tuple[Counter[int], int]:
        counts = Counter(
            {
                int(n): int(c)
                for n, c in ch_client.query("SELECT n, count() FROM ev GROUP BY n").result_rows
            }
        )
        parts = ch_client.command(
            f"SELECT count() FROM system.parts WHERE database = '{database}' AND table = 'ev' "
            "AND active"
        )
        return counts, int(parts)

    first = run(state, url)
    counts, parts = landed()
    assert sum(counts.values()) == len(KEYS)
    assert counts == Counter(KEYS)
    assert first.totals.dead_letters == 0 and first.totals.failures == 0

    # A crash after the inserts, before the batch left the spool: it is replayed.
    shutil.rmtree(state / "spool")
    shutil.copytree(saved, state / "spool")
    second = run(state, url)
    assert landed() == (counts, parts)  # every group dropped by its token
    assert second.totals.rows_replayed == len(KEYS) and second.totals.rows_inserted == 0
    assert second.totals.dead_letters == 0
