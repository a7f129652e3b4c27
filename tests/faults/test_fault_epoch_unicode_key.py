"""Epoch numbers of a timestamp column whose name is not ASCII are read by magnitude too.

The scan for epoch numbers looked for a column's name as ``json.dumps`` writes it, with
non-ASCII characters escaped (``"\\u0432..."``), while most JSON encoders (Go, JavaScript,
Python's own with ``ensure_ascii=False``) write them as they are, in UTF-8. So records of
a column named ``время`` were never found: epoch milliseconds went to ClickHouse as a
JSON number and saturated its ``DateTime`` at 2106-02-07 06:28:15, without an error.
Both spellings of the name are looked for now.
"""

from __future__ import annotations

import json
from typing import Any

from chworkers.clickhouse import epochs
from chworkers.clickhouse.connection import Connection
from chworkers.clickhouse.epochs import TimestampColumns
from chworkers.embedded import EmbeddedClickHouse

SETTINGS = {"date_time_input_format": "best_effort"}
MILLIS = 1_796_119_200_123


def test_epoch_millis_under_a_non_ascii_name_land_as_the_moment_meant(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Any
) -> None:
    ch_client.command(
        "CREATE TABLE ev (n UInt32, `время` DateTime, `когда` DateTime64(3)) "
        "ENGINE = MergeTree ORDER BY n"
    )
    records = [{"n": 1, "время": MILLIS, "когда": MILLIS}, {"n": 2, "время": MILLIS}]
    raw = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
    escaped = b'{"n":3,"\\u0432\\u0440\\u0435\\u043c\\u044f":%d}\n' % MILLIS
    columns = TimestampColumns(("время", "когда"), frozenset({"время"}))
    assert epochs.needs_rewrite(raw, columns) and epochs.needs_rewrite(escaped, columns)
    conn = Connection(f"{endpoint.url}/{database}")
    try:
        for token, body in (("raw", raw), ("escaped", escaped)):
            conn.raw_insert(
                "ev", body, fmt="JSONEachRow", settings=SETTINGS, deduplication_token=token
            )
    finally:
        conn.close()
    rows = ch_client.query(
        "SELECT n, toUnixTimestamp(`время`), toUnixTimestamp64Milli(`когда`) FROM ev ORDER BY n"
    ).result_rows
    assert rows == [
        (1, MILLIS // 1000, MILLIS),
        (2, MILLIS // 1000, 0),
        (3, MILLIS // 1000, 0),
    ]
