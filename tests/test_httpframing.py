from __future__ import annotations

import io
from email.message import Message

import pytest

from chworkers.errors import HttpRequestError
from chworkers.http.framing import body_framing, chunk_size, content_length, read_body


def headers(*pairs: tuple[str, str]) -> Message:
    msg = Message()
    for key, value in pairs:
        msg[key] = value
    return msg


@pytest.mark.parametrize("value", ["-1", "+5", "5_0", "0x10", " ", "", "1e3", "١٢"])
def test_content_length_is_digits_only(value: str) -> None:
    with pytest.raises(HttpRequestError) as info:
        content_length(value)
    assert info.value.status == 400


def test_content_length_values() -> None:
    assert content_length("0") == 0
    assert content_length(" 42 ") == 42


@pytest.mark.parametrize(
    "line", [b"-1\r\n", b"+1\r\n", b"0x10\r\n", b"1_0\r\n", b"\r\n", b"zz\r\n"]
)
def test_chunk_size_is_hex_digits_only(line: bytes) -> None:
    with pytest.raises(HttpRequestError) as info:
        chunk_size(line)
    assert info.value.status == 400


def test_chunk_size_values() -> None:
    assert chunk_size(b"1A;name=value\r\n") == 26
    assert chunk_size(b"0\r\n") == 0


def test_framing() -> None:
    assert body_framing(headers()) == (None, False)
    assert body_framing(headers(("Content-Length", "5"), ("Content-Length", "5"))) == (5, False)
    assert body_framing(headers(("Transfer-Encoding", "Chunked"))) == (None, True)
    for bad in [
        headers(("Content-Length", "5"), ("Content-Length", "6")),
        headers(("Content-Length", "5"), ("Transfer-Encoding", "chunked")),
        headers(("Transfer-Encoding", "gzip, chunked")),
    ]:
        with pytest.raises(HttpRequestError):
            body_framing(bad)
    with pytest.raises(HttpRequestError) as info:
        body_framing(headers(("Transfer-Encoding", "gzip")))
    assert info.value.status == 501


def test_read_body_chunked_and_limits() -> None:
    body = io.BytesIO(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer: 1\r\n\r\n")
    assert read_body(body, None, True, 10) == b"abcde"
    with pytest.raises(HttpRequestError) as info:
        read_body(io.BytesIO(b"ffffff\r\n"), None, True, 10)
    assert info.value.status == 413
    with pytest.raises(HttpRequestError) as info:
        read_body(io.BytesIO(b"abc"), 5, False, 10)
    assert info.value.status == 400
    with pytest.raises(HttpRequestError) as info:
        read_body(io.BytesIO(b"3\r\nabcX"), None, True, 10)
    assert info.value.status == 400
