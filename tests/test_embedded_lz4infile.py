"""lz4 insert bodies handed to chDB still compressed (``FROM INFILE ... COMPRESSION``).

Taken for a table that needs the swallowed-errors check and for any body announced
above a MiB. chDB's lz4 reader takes a body that stops at a frame's end (or in the
middle of one) for a complete one, so these check that a body cut short or broken
inserts nothing, wherever it stops, and that whole bodies of several frames land.
"""

from __future__ import annotations

import socket
import urllib.parse

import lz4.frame
import pytest
from httpcall import call

from chworkers.embedded import EmbeddedClickHouse

ROWS = b"".join(
    b"%d\tuser %d\t%s\n" % (i, i % 1000, str(i * 7919).encode()) for i in range(200_000)
)
ENGINES = {"MergeTree": "MergeTree ORDER BY a", "Memory": "Memory"}


def q(database: str, **params: str) -> str:
    return "/?" + urllib.parse.urlencode({"database": database, **params})


def count(endpoint: EmbeddedClickHouse, database: str) -> bytes:
    status, _, text = call(endpoint, q(database), b"SELECT count(), sum(a) FROM t")
    assert status == 200, text
    return text


def make_table(endpoint: EmbeddedClickHouse, database: str, engine: str) -> None:
    sql = f"CREATE TABLE t (a UInt64, u String, s String) ENGINE = {ENGINES[engine]}"
    assert call(endpoint, q(database), sql.encode())[0] == 200


def frames(data: bytes, pieces: int) -> list[bytes]:
    """One lz4 frame per piece of ``data`` (clickhouse-connect sends one per block)."""
    lines = data.splitlines(keepends=True)
    step = -(-len(lines) // pieces)
    return [lz4.frame.compress(b"".join(lines[i : i + step])) for i in range(0, len(lines), step)]


@pytest.mark.parametrize("engine", ["MergeTree", "Memory"])
def test_a_body_of_many_frames_lands_whole(
    endpoint: EmbeddedClickHouse, database: str, engine: str
) -> None:
    make_table(endpoint, database, engine)
    # Memory: only a body announced above a MiB goes compressed; MergeTree: any.
    data = ROWS if engine == "Memory" else b"".join(ROWS.splitlines(keepends=True)[:20_000])
    body = b"".join(frames(data, 7))
    assert engine == "MergeTree" or len(body) > 1 << 20
    target = q(database, query="INSERT INTO t FORMAT TSV")
    status, headers, text = call(endpoint, target, body, {"Content-Encoding": "lz4"})
    assert status == 200, text
    rows = data.count(b"\n")
    assert f'"written_rows":"{rows}"' in headers["X-ClickHouse-Summary"]
    expected = sum(int(line.split(b"\t")[0]) for line in data.splitlines())
    assert count(endpoint, database) == b"%d\t%d\n" % (rows, expected)


@pytest.mark.parametrize(
    ("engine", "lines"), [("MergeTree", 20_000), ("MergeTree", None), ("Memory", None)]
)
def test_a_body_cut_short_inserts_nothing_wherever_it_stops(
    endpoint: EmbeddedClickHouse, database: str, engine: str, lines: int | None
) -> None:
    """A small body is read whole before chDB sees it; a large one streams to chDB."""
    make_table(endpoint, database, engine)
    parts = frames(b"".join(ROWS.splitlines(keepends=True)[:lines]), 4)
    assert (len(b"".join(parts)) > 1 << 20) == (lines is None)
    body = b"".join(parts)
    target = q(database, query="INSERT INTO t FORMAT TSV")
    # At a frame's end, within a frame's blocks, within a frame's header.
    for sent in (len(parts[0]), len(parts[0]) + len(parts[1]) // 2, len(parts[0]) + 5):
        with socket.create_connection((endpoint.host, endpoint.port), timeout=30) as sock:
            head = (
                f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Encoding: lz4\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[:sent])
            sock.shutdown(socket.SHUT_WR)
            sock.recv(65536)  # the endpoint answers or closes
        assert count(endpoint, database) == b"0\t0\n", sent
    assert "Traceback" not in endpoint.log()


@pytest.mark.parametrize("engine", ["MergeTree", "Memory"])
def test_a_body_that_is_no_lz4_is_refused_and_inserts_nothing(
    endpoint: EmbeddedClickHouse, database: str, engine: str
) -> None:
    make_table(endpoint, database, engine)
    good = b"".join(frames(ROWS, 3))
    target = q(database, query="INSERT INTO t FORMAT TSV")
    for body in (good[:1000] + b"\x00" * 20, good + b"trailing junk", ROWS[:2_000_000]):
        status, headers, text = call(endpoint, target, body, {"Content-Encoding": "lz4"})
        assert status == 500, text
        assert headers["X-ClickHouse-Exception-Code"] == "271", text
        assert b"CANNOT_DECOMPRESS" in text
    assert count(endpoint, database) == b"0\t0\n"


def test_bad_data_in_a_good_body_is_chdbs_error(
    endpoint: EmbeddedClickHouse, database: str
) -> None:
    make_table(endpoint, database, "MergeTree")
    body = lz4.frame.compress(ROWS[:50_000] + b"not a number\tx\ty\n" + ROWS[:50_000])
    target = q(database, query="INSERT INTO t FORMAT TSV")
    status, headers, text = call(endpoint, target, body, {"Content-Encoding": "lz4"})
    assert status in (400, 500), text
    assert headers["X-ClickHouse-Exception-Code"] == "27", text  # CANNOT_PARSE_INPUT...
    assert count(endpoint, database) == b"0\t0\n"
    # The connection and the endpoint are fine afterwards.
    status, _, text = call(
        endpoint, target, lz4.frame.compress(b"1\tu\ts\n"), {"Content-Encoding": "lz4"}
    )
    assert status == 200, text
    assert count(endpoint, database) == b"1\t1\n"
