"""Regression tests: a result of many blocks is one document, as ClickHouse writes it.

Before the fix (issue 10, item 1) chDB's streaming API formatted every block as a
document of its own and the endpoint concatenated them: ``SELECT number FROM
numbers(200000) FORMAT JSON`` came back as four JSON documents, CSVWithNames repeated
its header per block, an ArrowStream reader stopped after the first block (57,344 of
1,000,000 rows, without an error) and Parquet was invalid. tests/test_embedded_formats.py
compares every format with chDB's own result; these are the reported cases.
"""

from __future__ import annotations

import http.client
import io
import json

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
from clickhouse_connect.driver.client import Client

from chworkers.embedded import EmbeddedClickHouse


def _select(endpoint: EmbeddedClickHouse, sql: str) -> bytes:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=300)
    try:
        conn.request("POST", "/", body=sql.encode())
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body[-500:]
        return body
    finally:
        conn.close()


def test_json_of_many_blocks_is_one_document(endpoint: EmbeddedClickHouse) -> None:
    doc = json.loads(_select(endpoint, "SELECT number FROM numbers(200000) FORMAT JSON"))
    assert doc["rows"] == 200_000
    assert doc["data"][-1] == {"number": 199999}


def test_csv_header_appears_once(endpoint: EmbeddedClickHouse) -> None:
    body = _select(
        endpoint,
        "SELECT number FROM numbers(5000) SETTINGS max_block_size=1000 FORMAT CSVWithNames",
    )
    lines = body.splitlines()
    assert lines[0] == b'"number"' and lines.count(b'"number"') == 1
    assert len(lines) == 5001


def test_arrow_stream_of_a_million_rows_reads_whole(endpoint: EmbeddedClickHouse) -> None:
    body = _select(endpoint, "SELECT number FROM numbers(1000000) FORMAT ArrowStream")
    table = pa.ipc.open_stream(io.BytesIO(body)).read_all()
    assert table.num_rows == 1_000_000


def test_parquet_of_many_blocks_is_valid(endpoint: EmbeddedClickHouse) -> None:
    body = _select(
        endpoint, "SELECT number FROM numbers(300000) SETTINGS max_block_size=1000 FORMAT Parquet"
    )
    assert pq.read_table(io.BytesIO(body)).num_rows == 300_000


def test_query_arrow_of_a_million_rows(ch_client: Client) -> None:
    assert ch_client.query_arrow("SELECT number FROM numbers(1000000)").num_rows == 1_000_000
