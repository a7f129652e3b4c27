"""``Supervisor.insert`` sends its rows compressed as the connection says, as
clickhouse-connect does.

Before: rows given to ``insert`` were encoded to Native in the producer's thread and the
worker sent that block uncompressed, whatever the connection's ``compress`` option
(lz4 by default) said, while clickhouse-connect's own ``insert`` of the same rows sends
them lz4-compressed: against a remote server a user's inserts crossed the network
about 2.5 times larger than with the plain client. What crosses is counted by the fault
proxy in front of the endpoint.
"""

from __future__ import annotations

from typing import Any

import pytest

from chworkers import Supervisor
from chworkers.clickhouse.connection import Connection

ROWS = 20_000


def _rows(offset: int) -> list[tuple[int, str, float]]:
    return [(offset + i, f"user-{i % 100:04d}", i * 0.5) for i in range(ROWS)]


def _sent(fault_proxy: Any, insert: Any) -> int:
    before = fault_proxy.counts["request_bytes"]
    insert()
    return int(fault_proxy.counts["request_bytes"] - before)


@pytest.mark.parametrize("form", ["rows", "columns"])
def test_insert_sends_rows_compressed_like_clickhouse_connect(
    fault_proxy: Any, database: str, ch_client: Any, form: str
) -> None:
    ch_client.command(
        "CREATE TABLE t (id UInt64, user String, value Float64) ENGINE = MergeTree ORDER BY id"
    )
    names = ("id", "user", "value")

    def batch(offset: int) -> Any:
        rows = _rows(offset)
        return rows if form == "rows" else {n: [r[i] for r in rows] for i, n in enumerate(names)}

    url = f"{fault_proxy.url}/{database}"
    plain = Connection(url)  # clickhouse-connect's insert, through the same proxy
    try:
        baseline = _sent(
            fault_proxy,
            lambda: plain.client.insert(
                "t", _rows(0), column_names=names, settings={"insert_deduplicate": 0}
            ),
        )
    finally:
        plain.close()
    with Supervisor(url, workers=1) as sup:
        sup.insert("t", batch(0), names).result(60)  # the column lookup: not counted
        lz4 = _sent(fault_proxy, lambda: sup.insert("t", batch(ROWS), names).result(60))
    with Supervisor(f"{url}?compress=false", workers=1) as sup:
        sup.insert("t", batch(2 * ROWS), names).result(60)
        as_is = _sent(fault_proxy, lambda: sup.insert("t", batch(3 * ROWS), names).result(60))
    # The Native block of these rows is ~480 KB; lz4 makes it ~170 KB.
    assert lz4 < 1.15 * baseline, (lz4, baseline)
    assert as_is > 2 * lz4, (as_is, lz4)
    assert ch_client.command("SELECT count(), uniqExact(id) FROM t") == [
        str(5 * ROWS),
        str(4 * ROWS),
    ]


def test_arrow_batches_are_compressed_inside_their_stream(
    fault_proxy: Any, database: str, ch_client: Any
) -> None:
    import pyarrow as pa

    ch_client.command(
        "CREATE TABLE t (id UInt64, user String, value Float64) ENGINE = MergeTree ORDER BY id"
    )
    names = ("id", "user", "value")

    def batch(offset: int) -> Any:
        rows = _rows(offset)
        return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})

    url = f"{fault_proxy.url}/{database}"
    plain = Connection(url)  # clickhouse-connect's insert_arrow, through the same proxy
    try:
        baseline = _sent(
            fault_proxy,
            lambda: plain.client.insert_arrow("t", batch(0), settings={"insert_deduplicate": 0}),
        )
    finally:
        plain.close()
    with Supervisor(url, workers=1) as sup:
        lz4 = _sent(fault_proxy, lambda: sup.insert("t", batch(ROWS)).result(60))
    with Supervisor(f"{url}?compress=false", workers=1) as sup:
        as_is = _sent(fault_proxy, lambda: sup.insert("t", batch(2 * ROWS)).result(60))
    assert lz4 < 1.15 * baseline, (lz4, baseline)
    assert as_is > 2 * lz4, (as_is, lz4)
    assert ch_client.command("SELECT count(), uniqExact(id) FROM t") == [
        str(3 * ROWS),
        str(3 * ROWS),
    ]
