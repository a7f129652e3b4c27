"""Regression test: a row that trips a column's ``throwIf`` stalled the daemon's pipeline.

``v UInt8 MATERIALIZED throwIf(n = 42, 'no 42')`` is how a table refuses rows it does
not want (ClickHouse answers FUNCTION_THROW_IF_VALUE_IS_NON_ZERO, 395, and writes
nothing of the insert). 395 was not one of the row errors the insert task bisects, so
the batch was retried whole, forever: none of its rows went in, nothing reached the
dead letters, the spool kept it. (The embedded endpoint used to answer such an insert
200 and lose every row of it; see test_fault_embedded_expression_columns.) It is now a
row error, as VIOLATED_CONSTRAINT is: the other rows are inserted and the row that
trips it goes to the dead letters with the error.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from test_fault_insertpath import daemon_config, dead_letters

from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("expression", "code", "message"),
    [
        ("v UInt8 MATERIALIZED throwIf(n = 42, 'no 42')", 395, "no 42"),
        # A division by a row's value: ILLEGAL_DIVISION (153) is the row's, as 395 is.
        ("v Int64 MATERIALIZED intDiv(100, toInt64(n) - 42)", 153, "Division by zero"),
    ],
    ids=["throwIf", "intDiv"],
)
def test_a_row_tripping_throwif_is_dead_lettered_and_the_rest_inserted(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    ch_client: Client,
    expression: str,
    code: int,
    message: str,
) -> None:
    rows = 100
    (tmp_path / "in.data").write_bytes(b"".join(b'{"n":%d,"s":"row"}\n' % i for i in range(rows)))
    cfg = daemon_config(
        tmp_path,
        endpoint,
        database,
        max_rows=rows,
        create=f"n UInt64, s String, {expression}",
        supervisor={"workers": 1},
    )
    daemon = Daemon(cfg)
    exit_code: list[int] = []
    runner = threading.Thread(target=lambda: exit_code.append(daemon.run()), daemon=True)
    runner.start()
    runner.join(90)  # with the batch retried whole, forever, it never ends
    stalled = runner.is_alive()
    if stalled:
        daemon.request_stop()
        runner.join(60)
    assert not stalled, "the batch was still being retried after 90 s"
    assert exit_code == [0]
    assert ch_client.query("SELECT count(), countIf(n = 42) FROM ev").result_rows == [(rows - 1, 0)]
    letters = dead_letters(tmp_path)
    assert [json.loads(e["record"])["n"] for e in letters] == [42]
    assert letters[0]["error"]["code"] == code and message in letters[0]["error"]["message"]
    assert daemon.spool.stats()["batches"] == 0
