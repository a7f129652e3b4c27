"""Epoch numbers looked for ahead of the worker (chworkers/daemon/epochcheck.py), and a
worker that sends a batch checked so without scanning it again, only for the same columns."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chworkers import Supervisor
from chworkers.clickhouse import epochs
from chworkers.clickhouse.connection import Connection
from chworkers.clickhouse.epochs import TimestampColumns, needs_rewrite, rewrite
from chworkers.daemon.epochcheck import RETRY_AFTER, EpochCheck
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import QueueFullError

SETTINGS = {"date_time_input_format": "best_effort"}
TS = TimestampColumns(("ts",), frozenset({"ts"}))
SECONDS = b'{"n":1,"ts":1796119200,"v":0.25}\n{"n":2,"ts":1796119201,"v":0.5}\n'
MILLIS = SECONDS + b'{"n":3,"ts":1796119200123,"v":0.75}\n'


@pytest.mark.parametrize(
    ("data", "timestamps"),
    [
        (SECONDS, TS),
        (MILLIS, TS),
        (SECONDS, TimestampColumns(("ts",))),  # DateTime64: seconds are rewritten too
        (b'{"ts":"2026-12-01T10:00:00Z"}\n', TimestampColumns(("ts",))),
        (b'{"ts":-5}\n{"ts":1.5}\n', TS),
        (MILLIS, TimestampColumns()),  # no timestamp column
        (MILLIS, TimestampColumns(("other",))),
    ],
)
def test_needs_rewrite_is_false_only_where_rewrite_leaves_the_bytes(
    data: bytes, timestamps: TimestampColumns
) -> None:
    unchanged = rewrite(data, timestamps.columns, timestamps.seconds) is data
    assert needs_rewrite(data, timestamps) is not unchanged
    assert needs_rewrite(memoryview(data), timestamps) is not unchanged


class Lookups:
    """The lookups an EpochCheck asks for, answered by the test."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Future[TimestampColumns]]] = []
        self.refuse = False

    def __call__(self, table: str) -> Future[TimestampColumns]:
        if self.refuse:
            raise QueueFullError("the queue is full")
        future: Future[TimestampColumns] = Future()
        self.asked.append((table, future))
        return future


def test_batches_are_checked_once_the_tables_columns_are_known() -> None:
    now = [100.0]
    lookups = Lookups()
    check = EpochCheck(lookups, ttl=60.0, clock=lambda: now[0])
    # Unknown yet: not checked (the worker scans), and one lookup asked for, not two.
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) is None
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) is None
    assert [t for t, _ in lookups.asked] == ["ev"]
    lookups.asked[0][1].set_result(TS)
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) == TS
    assert check.check("ev", "JSONEachRow", SETTINGS, MILLIS) is None  # the worker rewrites
    # Batches no worker scans are not checked, and ask for nothing.
    assert check.check("ev", "CSV", SETTINGS, SECONDS) is None
    assert check.check("ev", "JSONEachRow", {}, SECONDS) is None
    assert check.check("ev", "JSONEachRow", {"date_time_input_format": "basic"}, SECONDS) is None
    assert len(lookups.asked) == 1
    # Older than the ttl: still used while they are looked up again, once.
    now[0] += 61
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) == TS
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) == TS
    assert len(lookups.asked) == 2
    lookups.asked[1][1].set_result(TimestampColumns(("ts", "t64"), frozenset({"ts"})))
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) == TimestampColumns(
        ("ts", "t64"), frozenset({"ts"})
    )


def test_a_failed_lookup_is_tried_again_later() -> None:
    now = [100.0]
    lookups = Lookups()
    check = EpochCheck(lookups, clock=lambda: now[0])
    lookups.refuse = True  # the queue is full: as a failed lookup
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) is None
    lookups.refuse = False
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) is None
    assert lookups.asked == []  # not before RETRY_AFTER
    now[0] += RETRY_AFTER
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) is None
    lookups.asked[0][1].set_exception(ConnectionError("ClickHouse is down"))
    now[0] += RETRY_AFTER / 2
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) is None
    assert len(lookups.asked) == 1
    now[0] += RETRY_AFTER
    check.check("ev", "JSONEachRow", SETTINGS, SECONDS)
    lookups.asked[1][1].set_result(TS)
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) == TS


def test_a_worker_trusts_a_check_only_for_the_columns_it_finds(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Any
) -> None:
    """Told (wrongly, on purpose) that epoch milliseconds need no rewrite for the table's
    own columns, the worker sends them as they are: ClickHouse reads them as seconds and
    saturates the DateTime, which shows the scan was skipped. Told so for other columns,
    it scans and rewrites them as usual."""
    ch_client.command("CREATE TABLE ev (n UInt32, ts DateTime) ENGINE = MergeTree ORDER BY n")
    conn = Connection(f"{endpoint.url}/{database}")
    try:
        found = epochs.table_timestamps(conn, "ev")
    finally:
        conn.close()
    assert found == TS
    millis = b'{"n":%d,"ts":1796119200123}\n'
    with Supervisor(f"{endpoint.url}/{database}", workers=1) as sup:
        for n, checked in ((1, found), (2, TimestampColumns(("other",))), (3, None)):
            sup.insert_raw(
                "ev", millis % n, "JSONEachRow", settings=SETTINGS, timestamps_checked=checked
            ).result(30)
    rows = ch_client.query("SELECT n, toUnixTimestamp(ts) FROM ev ORDER BY n").result_rows
    assert rows == [(1, 2**32 - 1), (2, 1_796_119_200), (3, 1_796_119_200)]


_KEYS = [b'"ts"', b'"a"', b'"\xc3\xb6"', b'"\\u00f6"', b'"x"', b"ts", b""]
_SEPARATORS = [b":", b": ", b" :", b"\t:\n", b":  ", b"", b","]
_VALUES = [
    b"7",
    b"1796119200",
    b"12345678901",
    b"123456789012",
    b"1796119200123",
    b"-5",
    b"-",
    b"1.5",
    b"1e3",
    b"17E3",
    b'"2026-12-01"',
    b"null",
    b"",
    b"0.25",
]
_ENDS = [b",", b"}", b"}\n", b"", b" ", b".", b"e", b"x"]
_fields = st.tuples(*(st.sampled_from(c) for c in (_KEYS, _SEPARATORS, _VALUES, _ENDS)))


@settings(max_examples=1000, deadline=None)
@given(
    fields=st.lists(_fields.map(b"".join), max_size=12),
    columns=st.lists(st.sampled_from(["ts", "a", "ö"]), min_size=1, max_size=3, unique=True),
    whole=st.sets(st.sampled_from(["ts", "a", "ö"])),
)
def test_needs_rewrite_finds_what_the_full_pattern_finds(
    fields: list[bytes], columns: list[str], whole: set[str]
) -> None:
    """Keys, separators (spaced or not), numbers and what ends them: the compact first
    pass, then the full pattern from where it found something, answers as the full
    pattern over the whole batch."""
    data = b"".join(fields)
    seconds = frozenset(whole & set(columns))
    full = epochs._number_pattern(columns, seconds).search(data) is not None
    assert needs_rewrite(data, TimestampColumns(tuple(columns), seconds)) is full
