"""An insert the embedded ClickHouse cannot store for a full disk is an error, not a 200.

chDB's streaming insert swallows NOT_ENOUGH_SPACE (243, "Cannot reserve 3.97 MiB, not
enough space") as the MergeTree part is written: the endpoint answered 200 with the
rows counted as written, and none of them was in the table. With the daemon on such a
disk every batch from then on was confirmed and removed from the spool: rows lost.
Now the endpoint answers the error (its count rose in ``system.errors``, as for the
other codes chDB swallows), and the retry policy retries it: the batch waits.
"""

from __future__ import annotations

import os
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from smalldisk import small_filesystem

from chworkers.clickhouse.retry import RETRYABLE_CODES
from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(180)


def test_an_insert_that_does_not_fit_on_disk_is_refused_not_lost(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", size_mib=32) as tmpfs:
        if not tmpfs:
            pytest.skip("no tmpfs can be mounted here")
        ch = EmbeddedClickHouse(tmp_path / "small" / "data")
        ch.start()
        try:
            client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
            client.command("CREATE TABLE t (n UInt64, s String) ENGINE MergeTree ORDER BY n")
            acknowledged, refused = 0, []
            for i in range(20):  # ~4.3 MB each: the disk is full after about seven
                rows = b"".join(
                    b'{"n":%d,"s":"%s"}\n' % (i * 10_000 + j, os.urandom(200).hex().encode())
                    for j in range(10_000)
                )
                try:
                    client.raw_insert("t", insert_block=rows, fmt="JSONEachRow")
                except DatabaseError as exc:
                    refused.append(str(exc))
                    if len(refused) >= 2:
                        break
                else:
                    acknowledged += 10_000
            assert refused, "the disk never filled up"
            assert "NOT_ENOUGH_SPACE" in refused[0] or "243" in refused[0], refused[0]
            assert client.command("SELECT count() FROM t") == acknowledged
        finally:
            ch.close()
    assert 243 in RETRYABLE_CODES  # the daemon's batch waits for space, it is not held
