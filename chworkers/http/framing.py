"""HTTP/1.1 request body framing, parsed strictly; shared by chworkers' HTTP servers.

A body is framed by ``Content-Length`` or by chunked transfer coding. Lenient parsers
(``int()``) take ``-1`` (then read until the client closes), ``+5``, ``1_0``, or the first
of two different lengths; a proxy in front may frame the same bytes otherwise (request
smuggling). Here every size is digits only, ambiguous framing is a 400, a declared size
over the limit is a 413 before the body is read, and a body is read in pieces so that a
deadline can be given to each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from email.message import Message
from http import HTTPStatus
from typing import BinaryIO

from chworkers.errors import HttpRequestError

#: Longest chunk-size line accepted (hex digits, extensions and CRLF).
MAX_CHUNK_LINE = 4096
#: A body is read in pieces of this size, each within ``body_timeout``.
BODY_PIECE = 1 << 20
_HEX = frozenset(b"0123456789abcdefABCDEF")
_DIGITS = frozenset(b"0123456789")


def http_error(
    status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> HttpRequestError:
    """Shorthand: an :class:`HttpRequestError` answered with ``status``."""
    return HttpRequestError(message, status=int(status), headers=dict(headers or {}))


# -- framing -------------------------------------------------------------------------


def body_framing(headers: Message) -> tuple[int | None, bool]:
    """``(content_length, chunked)`` of a request; raises a 400 for anything ambiguous.

    A Content-Length must be one non-negative decimal number (repeated only with the
    same value); the only transfer coding accepted is ``chunked``, and never together
    with a Content-Length (RFC 9112 6.3: the combination is how requests are smuggled).
    """
    encodings = headers.get_all("Transfer-Encoding") or []
    lengths = headers.get_all("Content-Length") or []
    if encodings:
        coding = ",".join(str(e) for e in encodings).strip().lower()
        if coding != "chunked":
            raise http_error(
                HTTPStatus.NOT_IMPLEMENTED if "chunked" not in coding else HTTPStatus.BAD_REQUEST,
                f"Transfer-Encoding {coding!r} is not supported: send 'chunked' or a "
                "Content-Length",
            )
        if lengths:
            raise http_error(
                HTTPStatus.BAD_REQUEST,
                "a request may not have both Transfer-Encoding and Content-Length",
            )
        return None, True
    if not lengths:
        return None, False
    values = {str(v).strip() for v in lengths}
    if len(values) != 1:
        raise http_error(
            HTTPStatus.BAD_REQUEST, f"conflicting Content-Length headers: {sorted(values)}"
        )
    return content_length(values.pop()), False


def content_length(value: str) -> int:
    """A Content-Length value: decimal digits only (no sign, no blanks, no ``_``)."""
    raw = value.strip().encode("latin-1", "replace")
    if not raw or len(raw) > 18 or not _DIGITS.issuperset(raw):
        raise http_error(
            HTTPStatus.BAD_REQUEST,
            f"invalid Content-Length {value[:40]!r}: expected a non-negative decimal integer",
        )
    return int(raw)


def chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (``1a2b;ext=1\\r\\n``): hex digits only."""
    if not line.endswith(b"\n"):
        raise http_error(
            HTTPStatus.BAD_REQUEST,
            "the chunked body ended inside a chunk-size line"
            if len(line) < MAX_CHUNK_LINE
            else f"a chunk-size line is longer than {MAX_CHUNK_LINE} bytes",
        )
    digits = line.split(b";", 1)[0].strip(b" \t\r\n")
    if not digits or len(digits) > 15 or not _HEX.issuperset(digits):
        raise http_error(
            HTTPStatus.BAD_REQUEST,
            f"invalid chunk size {line[:40]!r}: expected hexadecimal digits",
        )
    return int(digits, 16)


def read_body(
    rfile: BinaryIO,
    length: int | None,
    chunked: bool,
    limit: int,
    *,
    progress: Callable[[], None] = lambda: None,
    on_chunk: Callable[[int], None] = lambda size: None,
    what: str = "body",
) -> bytes:
    """Read a whole body framed by ``length`` or chunked; a 413 as soon as the sizes
    announced pass ``limit`` (before that data is read), a 400 if it is cut short.

    ``progress`` is called before each read of up to :data:`BODY_PIECE` bytes (to
    give the client a deadline for each piece), ``on_chunk`` with the size of each chunk
    of a chunked body before it is read (to account for the memory it will take).
    """
    if not chunked:
        if not length:
            return b""
        if length > limit:
            raise too_large(length, limit, what)
        return _read_exactly(rfile, length, progress)
    parts: list[bytes] = []
    total = 0
    while True:
        progress()
        size = chunk_size(rfile.readline(MAX_CHUNK_LINE))
        if size == 0:
            _skip_trailers(rfile)
            return b"".join(parts)
        total += size
        if total > limit:
            raise too_large(total, limit, what, at_least=True)
        on_chunk(size)
        parts.append(_read_exactly(rfile, size, progress))
        if rfile.readline(MAX_CHUNK_LINE) not in (b"\r\n", b"\n"):
            raise http_error(HTTPStatus.BAD_REQUEST, "a chunk does not end with CRLF")


def _read_exactly(rfile: BinaryIO, size: int, progress: Callable[[], None]) -> bytes:
    parts: list[bytes] = []
    left = size
    while left:
        progress()
        data = rfile.read(min(left, BODY_PIECE))
        if not data:
            raise http_error(
                HTTPStatus.BAD_REQUEST,
                f"the body ended {left} bytes short of the {size} bytes announced",
            )
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _skip_trailers(rfile: BinaryIO) -> None:
    for _ in range(100):
        line = rfile.readline(MAX_CHUNK_LINE)
        if line in (b"\r\n", b"\n"):
            return
        if not line.endswith(b"\n"):
            raise http_error(HTTPStatus.BAD_REQUEST, "the chunked body ended in its trailers")
    raise http_error(HTTPStatus.BAD_REQUEST, "more than 100 trailer lines")


def too_large(size: int, limit: int, what: str, *, at_least: bool = False) -> HttpRequestError:
    """A 413 for a body of ``size`` bytes over ``limit``."""
    more = "at least " if at_least else ""
    return http_error(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        f"the {what} is {more}{size} bytes, over the limit of {limit} bytes",
    )


def plain_response(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A complete ``Connection: close`` response, for answers sent outside a handler."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    lines = [f"HTTP/1.1 {status} {phrase}", f"Content-Type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body
