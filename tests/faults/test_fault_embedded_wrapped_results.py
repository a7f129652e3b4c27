"""Regression tests: totals, extremes and wrapping settings over results of many blocks.

Before the fix (issue 10, item 1) a streamed result was joined from chDB's per-block
documents even when those are more than their rows: with
``output_format_json_array_of_rows=1`` JSONEachRow came back as one array per block,
CustomSeparated repeated its result delimiters per block, CSVWithNames put the WITH
TOTALS row before a repeated header, and ArrowStream with ``extremes=1`` failed with
a LOGICAL_ERROR from chDB's streaming, and RowBinaryWithNamesAndTypes with types
encoded in binary failed (its header is not the strings the joiner strips). Such
results are now produced whole.
"""

from __future__ import annotations

import io
import uuid

import pyarrow as pa
import pyarrow.ipc
from httpcall import call

from chworkers.embedded import EmbeddedClickHouse

BLOCKS = "SETTINGS max_block_size=2"


def _post(endpoint: EmbeddedClickHouse, body: str, target: str = "/") -> bytes:
    status, _, data = call(endpoint, target, body.encode(), timeout=60)
    assert status == 200, data
    return data


def test_json_array_of_rows_from_the_url(endpoint: EmbeddedClickHouse) -> None:
    body = _post(
        endpoint,
        f"SELECT number AS n FROM numbers(5) {BLOCKS} FORMAT JSONEachRow",
        "/?output_format_json_array_of_rows=1",
    )
    assert body == b'[\n{"n":0},\n{"n":1},\n{"n":2},\n{"n":3},\n{"n":4}\n]\n'


def test_custom_result_delimiters_set_in_a_session(endpoint: EmbeddedClickHouse) -> None:
    target = f"/?session_id={uuid.uuid4()}"
    _post(endpoint, "SET format_custom_result_before_delimiter = '<'", target)
    _post(endpoint, "SET format_custom_result_after_delimiter = '>'", target)
    body = _post(endpoint, f"SELECT number FROM numbers(5) {BLOCKS} FORMAT CustomSeparated", target)
    assert body == b"<0\n1\n2\n3\n4\n>"


def test_totals_after_the_rows_and_the_header_once(endpoint: EmbeddedClickHouse) -> None:
    body = _post(
        endpoint,
        "SELECT number % 3 AS k, count() AS c FROM numbers(5000) GROUP BY k WITH TOTALS "
        "ORDER BY k SETTINGS max_block_size=1 FORMAT CSVWithNames",
    )
    assert body == b'"k","c"\n0,1667\n1,1667\n2,1666\n\n0,5000\n'


def test_arrow_stream_with_extremes(endpoint: EmbeddedClickHouse) -> None:
    body = _post(
        endpoint,
        "SELECT number FROM numbers(3000) SETTINGS max_block_size=1000, extremes=1 FORMAT ArrowStream",
    )
    table = pa.ipc.open_stream(io.BytesIO(body)).read_all()
    assert table.num_rows >= 3000
    assert table.column("number").to_pylist()[:3000] == list(range(3000))


def test_row_binary_with_types_encoded_in_binary(endpoint: EmbeddedClickHouse) -> None:
    body = _post(
        endpoint,
        "SELECT number FROM numbers(5000) SETTINGS max_block_size=1000, "
        "output_format_binary_encode_types_in_binary_format=1 FORMAT RowBinaryWithNamesAndTypes",
    )
    # One column "number" of type UInt64 (binary type code 0x04), then 5000 UInt64s.
    assert body[:9] == b"\x01\x06number\x04"
    assert len(body) == 9 + 5000 * 8
    assert int.from_bytes(body[-8:], "little") == 4999
