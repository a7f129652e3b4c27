"""The bisection cuts a spooled batch into the records the framer made: at ``\\n`` only
(a bare ``\\r`` is data; ``bytes.splitlines`` cut there too), never inside a quoted CSV
field."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chworkers.clickhouse.inserts import LINE_FORMATS, split_records
from chworkers.daemon.framing import Framer


def test_a_bare_carriage_return_is_data() -> None:
    batch = b'{"s":"a\rb"}\n{"s":"c\x0bd\x1ce"}\n'
    assert split_records(batch, quoted_newlines=False) == [
        b'{"s":"a\rb"}\n',
        b'{"s":"c\x0bd\x1ce"}\n',
    ]
    assert split_records(b'"x\r\ny",1\r\nz,2\n', quoted_newlines=True) == [
        b'"x\r\ny",1\r\n',
        b"z,2\n",
    ]


@settings(max_examples=300, deadline=None)
@given(
    fmt=st.sampled_from(["JSONEachRow", "CSV", "TSV"]),
    data=st.lists(
        st.sampled_from([b"a", b",", b'"', b"\r", b"\n", b"\x0b", b"\x85", b" "]), max_size=60
    ),
)
def test_split_records_matches_the_framer(fmt: str, data: list[bytes]) -> None:
    framer = Framer(fmt)
    body, _ = framer.feed(b"".join(data))
    tail, _ = framer.finish()
    framed = body + tail
    quoted = LINE_FORMATS[fmt].quoted_newlines
    records = split_records(framed, quoted_newlines=quoted)
    assert b"".join(records) == framed
    # Each record the bisection makes is one the framer would make again, whole.
    for record in records:
        again = Framer(fmt)
        out, _ = again.feed(record)
        rest, _ = again.finish()
        assert out + rest in (record, record + b"\n")
