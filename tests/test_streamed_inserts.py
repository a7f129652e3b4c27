"""A large JSONEachRow body that may hold epoch numbers streams in scanned pieces.

``Connection.raw_insert`` sends a JSONEachRow body of 1 MiB or more whose table has
timestamp columns (and whose settings say ``best_effort``) as a chunked request: each
piece of about 1 MiB is scanned for epoch numbers, and rewritten when it holds some,
just before it goes, so the server parses one piece while the next is scanned. These
check that what lands is what the whole-batch rewrite meant, and that a request cut
halfway through its body lands nothing (a retry then lands it once).
"""

from __future__ import annotations

from typing import Any

import pytest
from faultproxy import FaultProxy

from chworkers.clickhouse import epochs
from chworkers.clickhouse.connection import Connection
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ChworkersError

SETTINGS = {"date_time_input_format": "best_effort"}
T = 1_796_119_200  # 2026-12-01T10:00:00Z
ROWS = 40_000  # about 3 MiB: three pieces and more


def _body(marker_at: int | None = None) -> bytes:
    """ROWS records; every 1,000th has milliseconds in both columns (a piece with them
    is rewritten), the rest whole seconds in ``ts`` (those pieces go as they are)."""
    lines = []
    for i in range(ROWS):
        if i % 1000 == 999:
            lines.append(
                b'{"n":%d,"ts":%d,"t64":%d,"pad":"%s"}\n'
                % (i, T * 1000 + i, T * 1000 + i, b"x" * 40)
            )
        else:
            mark = b"cut-here" if i == marker_at else b"x" * 8
            lines.append(
                b'{"n":%d,"ts":%d,"t64":"2026-12-01T10:00:00Z","pad":"%s"}\n'
                % (i, T + i, mark + b"x" * 32)
            )
    return b"".join(lines)


def _table(ch_client: Any) -> None:
    ch_client.command(
        "CREATE TABLE ev (n UInt32, ts DateTime, t64 DateTime64(3), pad String) "
        "ENGINE = MergeTree ORDER BY n SETTINGS non_replicated_deduplication_window = 100"
    )


def _check(ch_client: Any) -> None:
    rows = ch_client.query(
        "SELECT count(), uniqExact(n), "
        "countIf(n % 1000 = 999 AND toUnixTimestamp(ts) = 1796119200 + intDiv(n, 1000) "
        "AND toUnixTimestamp64Milli(t64) = 1796119200000 + n), "
        "countIf(n % 1000 != 999 AND toUnixTimestamp(ts) = 1796119200 + n) FROM ev"
    ).result_rows[0]
    assert rows == (ROWS, ROWS, ROWS // 1000, ROWS - ROWS // 1000)


def test_a_large_body_streams_in_pieces_and_lands_as_rewritten(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Any
) -> None:
    _table(ch_client)
    body = _body()
    assert len(body) > 2 * epochs.PIECE
    conn = Connection(f"{endpoint.url}/{database}")
    try:
        streamed = epochs.prepare_pieces(conn, "ev", memoryview(body), SETTINGS)
        assert streamed is not None
        assert b"".join(streamed) == epochs.rewrite(body, ["ts", "t64"], {"ts"})
        summary = conn.raw_insert(
            "ev", memoryview(body), fmt="JSONEachRow", settings=SETTINGS, deduplication_token="a"
        )
        assert summary.written_rows == ROWS
        _check(ch_client)
        # The same token again: dropped whole, as a replay of the batch is.
        conn.raw_insert(
            "ev", memoryview(body), fmt="JSONEachRow", settings=SETTINGS, deduplication_token="a"
        )
        _check(ch_client)
    finally:
        conn.close()


def test_without_best_effort_or_timestamps_the_body_goes_unscanned(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Any
) -> None:
    ch_client.command("CREATE TABLE plain (n UInt32, s String) ENGINE = MergeTree ORDER BY n")
    _table(ch_client)
    conn = Connection(f"{endpoint.url}/{database}")
    try:
        body = memoryview(_body())
        assert epochs.prepare_pieces(conn, "plain", body, SETTINGS) is None
        assert epochs.prepare_pieces(conn, "ev", body, {}) is None
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_a_body_cut_halfway_lands_nothing_and_its_retry_lands_once(
    fault_proxy: FaultProxy, endpoint: EmbeddedClickHouse, database: str, ch_client: Any
) -> None:
    """The connection is reset once the proxy has forwarded the first MiB and more (the
    marker sits past it): the server has parsed pieces of the insert, which must not be
    committed; the retry, with the same token, lands every row once."""
    _table(ch_client)
    body = _body(marker_at=ROWS * 3 // 4)
    assert body.index(b"cut-here") > epochs.PIECE
    fault_proxy.set("reset", times=1, match=b"cut-here")
    conn = Connection(f"{fault_proxy.url}/{database}")
    try:
        with pytest.raises(ChworkersError):
            conn.raw_insert(
                "ev",
                memoryview(body),
                fmt="JSONEachRow",
                settings=SETTINGS,
                deduplication_token="b",
            )
        assert ch_client.query("SELECT count() FROM ev").result_rows[0][0] == 0
        conn.raw_insert(
            "ev", memoryview(body), fmt="JSONEachRow", settings=SETTINGS, deduplication_token="b"
        )
        _check(ch_client)
    finally:
        conn.close()
