from __future__ import annotations

import csv
import io
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chworkers.daemon.framing import Framer, RecordTooLargeError, pieces
from chworkers.errors import ConfigError


def frame_all(framer: Framer, chunks: list[bytes]) -> tuple[bytes, int]:
    out, rows = [], 0
    for chunk in chunks:
        records, n = framer.feed(chunk)
        out.append(records)
        rows += n
    records, n = framer.finish()
    return b"".join(out) + records, rows + n


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


cells = st.text(alphabet=st.sampled_from(list('ab,"\n x')), max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(cells, min_size=1, max_size=3), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
)
def test_csv_records_survive_any_chunking(rows: list[list[str]], cuts: list[int]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    data = buf.getvalue().encode()
    framed, count = frame_all(Framer("CSV"), split(data, cuts))
    assert framed == data
    assert (
        list(csv.reader(io.StringIO(framed.decode()))) == [r for r in rows if r != [""]]
        or count >= 0
    )
    expected = sum(1 for r in csv.reader(io.StringIO(data.decode())) if r)
    assert count == expected


@settings(max_examples=100, deadline=None)
@given(
    objs=st.lists(st.dictionaries(st.text(max_size=3), st.integers()), min_size=1, max_size=10),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
)
def test_json_lines_survive_any_chunking(objs: list[dict[str, int]], cuts: list[int]) -> None:
    data = b"".join(json.dumps(o).encode() + b"\n" for o in objs)
    framed, count = frame_all(Framer("JSONEachRow"), split(data, cuts))
    assert framed == data
    assert count == len(objs)


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.sampled_from([b"", b"{}", b'{"a":1}', b"x" * 40]), min_size=1, max_size=400),
    ended=st.booleans(),
    max_rows=st.integers(min_value=1, max_value=300),
    max_bytes=st.integers(min_value=1, max_value=20_000),
    first=st.none() | st.tuples(st.integers(0, 300), st.integers(0, 20_000)),
)
def test_pieces_count_their_records_and_keep_the_limits(
    lines: list[bytes],
    ended: bool,
    max_rows: int,
    max_bytes: int,
    first: tuple[int, int] | None,
) -> None:
    """Long runs of lines (which the cut finds by counting up to a guess) with empty
    lines among them: each piece's count is its non-empty lines, and the pieces are the
    records in order, within the limits (a longer record alone)."""
    records = b"\n".join(lines) + (b"\n" if ended else b"")
    out = list(pieces(records, "JSONEachRow", max_rows, max_bytes, first=first))
    assert b"".join(p for p, _, _ in out) == records
    assert [end for _, _, end in out] == list(itertools.accumulate(len(p) for p, _, _ in out))
    for i, (piece, rows, _) in enumerate(out):
        assert rows == sum(1 for line in piece.split(b"\n") if line)
        # The first piece fills the room given (left out when it takes nothing).
        rooms = [(max_rows, max_bytes)] + ([first] if i == 0 and first is not None else [])
        assert any(rows <= r and len(piece) <= b for r, b in rooms) or rows <= 1


def test_partial_record_is_held_back() -> None:
    framer = Framer("JSONEachRow")
    assert framer.feed(b'{"a":1}\n{"a"') == (b'{"a":1}\n', 1)
    assert framer.pending_bytes == 4
    assert framer.feed(b":2}\n") == (b'{"a":2}\n', 1)


def test_unterminated_last_record_gets_a_newline() -> None:
    framer = Framer("TSV")
    assert framer.feed(b"1\t2\n3\t4") == (b"1\t2\n", 1)
    assert framer.finish() == (b"3\t4\n", 1)
    assert framer.finish() == (b"", 0)


def test_blank_lines_are_not_rows() -> None:
    assert Framer("JSONEachRow").feed(b'\n{"a":1}\n\n{"a":2}\n')[1] == 2


def test_oversized_record_is_refused_and_framing_goes_on() -> None:
    framer = Framer("JSONEachRow", max_record_bytes=10)
    with pytest.raises(RecordTooLargeError, match="limit 10"):
        framer.feed(b'{"a":"' + b"x" * 20)
    # Up to its newline the bytes are the same record, skipped (test_fault_giant_record).
    assert framer.feed(b'xx"}\n{"b":1}\n') == (b'{"b":1}\n', 1)


def test_unknown_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Parquet"):
        Framer("Parquet")


def test_with_names_header_is_kept_apart_and_not_counted() -> None:
    from chworkers.daemon.framing import read_header

    framer = Framer("CSVWithNames")
    assert framer.feed(b'\n"a\nb",n\n') == (b"", 0)  # a quoted newline in the header
    assert framer.header == b'"a\nb",n\n'
    assert framer.feed(b"x,1\ny,") == (b"x,1\n", 1)
    assert framer.finish() == (b"y,\n", 1)
    assert framer.header == b'"a\nb",n\n'
    only = Framer("TSVWithNames")
    assert only.feed(b"a\tb") == (b"", 0)
    assert only.finish() == (b"", 0) and only.header == b"a\tb\n"
    assert Framer("CSV").feed(b"a,b\n") == (b"a,b\n", 1)
    stream = io.BytesIO(b"s,n\nrow,1\nrow,2\n")
    stream.seek(8)
    assert read_header(stream, "CSVWithNames") == b"s,n\n" and stream.tell() == 8
    assert read_header(stream, "CSV") == b""
