"""Whole epoch seconds in a DateTime column are sent as they are.

Reading JSON epoch numbers by magnitude (issue 15) rewrote every record with a number
in a timestamp column into an ISO string, about 6 us of a worker's CPU per record: a
100,000-row batch of the daemon's benchmark (``ts`` as Unix seconds in a ``DateTime``
column) took 0.6 s or more to prepare for a 0.2 s insert, three times the request.
ClickHouse reads whole seconds in a plain ``DateTime`` column right, so those records go
as they are now; numbers that need reading by magnitude (milliseconds and finer,
fractions, anything in a ``DateTime64`` column) are still rewritten.
"""

from __future__ import annotations

from typing import Any

from chworkers.clickhouse import epochs
from chworkers.clickhouse.connection import Connection
from chworkers.embedded import EmbeddedClickHouse

SETTINGS = {"date_time_input_format": "best_effort"}


def test_a_batch_of_whole_seconds_is_sent_unchanged_and_lands_right(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Any
) -> None:
    ch_client.command(
        "CREATE TABLE ev (n UInt32, ts DateTime, t64 DateTime64(3)) ENGINE = MergeTree ORDER BY n"
    )
    conn = Connection(f"{endpoint.url}/{database}")
    try:
        seconds = b"".join(
            b'{"n":%d,"ts":%d,"t64":"2026-12-01T10:00:00Z"}\n' % (i, 1_796_119_200 + i)
            for i in range(1000)
        )
        assert epochs.prepare(conn, "ev", seconds, "JSONEachRow", SETTINGS) is seconds
        conn.raw_insert(
            "ev", seconds, fmt="JSONEachRow", settings=SETTINGS, deduplication_token="s"
        )
        millis = b'{"n":1000,"ts":1796119200123,"t64":1796119200123}\n'
        assert epochs.prepare(conn, "ev", millis, "JSONEachRow", SETTINGS) != millis
        conn.raw_insert("ev", millis, fmt="JSONEachRow", settings=SETTINGS, deduplication_token="m")
    finally:
        conn.close()
    rows = ch_client.query(
        "SELECT min(toUnixTimestamp(ts)), max(toUnixTimestamp(ts)), count() FROM ev WHERE n < 1000"
    ).result_rows
    assert rows == [(1_796_119_200, 1_796_119_200 + 999, 1000)]
    last = ch_client.query(
        "SELECT toUnixTimestamp(ts), toUnixTimestamp64Milli(t64) FROM ev WHERE n = 1000"
    ).result_rows
    assert last == [(1_796_119_200, 1_796_119_200_123)]
