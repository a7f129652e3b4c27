"""Regressions of the columnar inputs (issue 11).

- A pyarrow slice was pickled to the worker with its parent's whole buffers (a 100k-row
  slice of a 2M-row table: 76 MB instead of 3.8 MB).
- A numpy ``datetime64`` column failed in clickhouse-connect's serializer
  (``'numpy.datetime64' object has no attribute 'timestamp'``).
- A structured array's ``datetime64`` field became naive datetimes, which
  clickhouse-connect reads in the local time zone: off by the zone's offset.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np
import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client

from chworkers import EmbeddedClickHouse, Supervisor
from chworkers.clickhouse.connection import Connection
from chworkers.workers import tasks

pytestmark = pytest.mark.timeout(120)


def test_an_arrow_slice_travels_without_its_parent() -> None:
    parent = pa.table({"id": pa.array(range(200_000), pa.uint64()), "s": ["x" * 20] * 200_000})
    task = tasks.encode_insert(1, Future(), "t", parent.slice(1000, 1000), None, None, None)
    own = 1000 * (8 + 4 + 20)
    assert task.nbytes < 2 * own + 4096, task.nbytes  # the parent is ~5.6 MB


@pytest.fixture
def utc_elsewhere() -> Iterator[None]:
    """This process's local time zone is not UTC (a datetime's naive reading shifts)."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def test_datetime64_columns_and_fields_insert_as_utc(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client, utc_elsewhere: None
) -> None:
    ch_client.command("CREATE TABLE t (id Int32, ts DateTime) ENGINE = MergeTree ORDER BY id")
    stamp = np.datetime64("2024-06-01T10:00:00", "s")
    structured = np.array([(1, stamp)], dtype=[("id", "i4"), ("ts", "M8[s]")])
    with Connection(f"{endpoint.url}/{database}") as conn:
        conn.insert("t", structured)
        conn.insert("t", {"id": np.array([2], "i4"), "ts": np.array([stamp], "M8[ns]")})
    with Supervisor(f"{endpoint.url}/{database}", workers=1, start_method="fork") as sup:
        assert sup.insert("t", {"id": np.array([3], "i4"), "ts": np.array([stamp])}).result(60) == 1
        assert sup.insert("t", structured).result(60) == 1
    want = dt.datetime(2024, 6, 1, 10, 0, 0)
    got = ch_client.query("SELECT id, ts FROM t ORDER BY ALL").result_rows
    assert got == [(1, want), (1, want), (2, want), (3, want)]
