"""Content-Encoding codecs: streaming decoders for request bodies, encoders for responses.

ClickHouse accepts ``gzip``, ``deflate`` (zlib), ``br``, ``zstd`` and ``lz4`` (frame format)
request bodies, and a body may be several independently compressed frames one after
the other (clickhouse-connect compresses each insert block on its own). Decoders here
restart on the next frame instead of stopping at the first one's end, and never hold
more than one input chunk's worth of output.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, Protocol

import lz4.frame
import zstandard

from chworkers.embedded.exceptions import (
    CANNOT_DECOMPRESS,
    UNKNOWN_COMPRESSION_METHOD,
    clickhouse_error,
)

try:
    import brotli
except ImportError:  # pragma: no cover - brotli is a declared dependency
    brotli = None

#: Encodings, in the order the endpoint prefers them for responses.
SUPPORTED = ("lz4", "zstd", "br", "gzip", "deflate")


class Decoder(Protocol):
    def decode(self, chunk: bytes) -> bytes: ...
    def finish(self) -> None: ...


class _FramedDecoder:
    """Decodes a sequence of frames, each with a fresh codec-level decompressor."""

    def __init__(self, name: str, factory: Callable[[], Any]) -> None:
        self._name = name
        self._factory = factory
        self._dec: Any = None
        self._in_frame = False

    def decode(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        data = chunk
        try:
            while data:
                if self._dec is None:
                    self._dec = self._factory()
                    self._in_frame = True
                produced = self._dec.decompress(data)
                if produced:
                    out.append(produced)
                if self._is_eof():
                    data = self._unused()
                    self._dec = None
                    self._in_frame = False
                else:
                    data = b""
        except Exception as exc:
            raise self._broken(str(exc)) from exc
        return b"".join(out)

    def finish(self) -> None:
        if self._in_frame:
            raise self._broken("the body ends in the middle of a compressed frame")

    def _broken(self, why: str) -> Exception:
        return clickhouse_error(
            CANNOT_DECOMPRESS,
            f"Cannot decompress the request body (Content-Encoding: {self._name}): {why}",
        )

    def _is_eof(self) -> bool:
        return bool(self._dec.eof)

    def _unused(self) -> bytes:
        return bytes(self._dec.unused_data or b"")


class _ZstdDecoder(_FramedDecoder):
    def __init__(self) -> None:
        ctx = zstandard.ZstdDecompressor()
        super().__init__("zstd", ctx.decompressobj)


class _BrotliDecoder:
    """Brotli has no frame boundary a stream could restart at: one stream per body."""

    def __init__(self) -> None:
        if brotli is None:  # pragma: no cover
            raise clickhouse_error(UNKNOWN_COMPRESSION_METHOD, "brotli is not installed")
        self._dec = brotli.Decompressor()

    def decode(self, chunk: bytes) -> bytes:
        try:
            return bytes(self._dec.process(chunk))
        except Exception as exc:
            raise clickhouse_error(
                CANNOT_DECOMPRESS, f"Cannot decompress the request body (br): {exc}"
            ) from exc

    def finish(self) -> None:
        if not self._dec.is_finished():
            raise clickhouse_error(
                CANNOT_DECOMPRESS, "Cannot decompress the request body (br): truncated stream"
            )


class _Identity:
    def decode(self, chunk: bytes) -> bytes:
        return chunk

    def finish(self) -> None:
        return None


def decoder_for(encoding: str | None) -> Decoder:
    """A decoder for a request's ``Content-Encoding`` (None or ``identity``: as is)."""
    name = (encoding or "").strip().lower()
    if name in ("", "identity", "none"):
        return _Identity()
    if name == "gzip" or name == "x-gzip":
        return _FramedDecoder("gzip", lambda: zlib.decompressobj(wbits=31))
    if name == "deflate":
        # ClickHouse's "deflate" is zlib-wrapped; accept raw deflate too (auto-detect).
        return _FramedDecoder("deflate", lambda: zlib.decompressobj(wbits=47))
    if name == "zstd":
        return _ZstdDecoder()
    if name == "lz4":
        return _FramedDecoder("lz4", lz4.frame.LZ4FrameDecompressor)
    if name == "br":
        return _BrotliDecoder()
    raise clickhouse_error(
        UNKNOWN_COMPRESSION_METHOD,
        f"Unknown Content-Encoding of HTTP request: {encoding}. Supported: {', '.join(SUPPORTED)}",
    )


class Encoder(Protocol):
    name: str

    def encode(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class _ZlibEncoder:
    def __init__(self, name: str, wbits: int, level: int) -> None:
        self.name = name
        self._c = zlib.compressobj(level, zlib.DEFLATED, wbits)

    def encode(self, chunk: bytes) -> bytes:
        # A sync flush per chunk lets the client decode what it has received so far.
        return self._c.compress(chunk) + self._c.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._c.flush(zlib.Z_FINISH)


class _ZstdEncoder:
    name = "zstd"

    def __init__(self, level: int) -> None:
        self._c = zstandard.ZstdCompressor(level=level).compressobj()

    def encode(self, chunk: bytes) -> bytes:
        out: bytes = self._c.compress(chunk)
        return out + self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        out: bytes = self._c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        return out


class _Lz4Encoder:
    name = "lz4"

    def __init__(self) -> None:
        self._c = lz4.frame.LZ4FrameCompressor(auto_flush=True)
        self._started = False

    def encode(self, chunk: bytes) -> bytes:
        head = b""
        if not self._started:
            head = self._c.begin()
            self._started = True
        out: bytes = self._c.compress(chunk)
        return head + out

    def finish(self) -> bytes:
        head = b"" if self._started else self._c.begin()
        self._started = True
        out: bytes = self._c.flush()
        return head + out


class _BrotliEncoder:
    name = "br"

    def __init__(self, quality: int) -> None:
        assert brotli is not None
        self._c = brotli.Compressor(quality=quality)

    def encode(self, chunk: bytes) -> bytes:
        return bytes(self._c.process(chunk)) + bytes(self._c.flush())

    def finish(self) -> bytes:
        return bytes(self._c.finish())


def choose_encoding(accept_encoding: str | None) -> str | None:
    """The first encoding in the client's ``Accept-Encoding`` list the endpoint supports."""
    if not accept_encoding:
        return None
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        if params.replace(" ", "") in ("q=0", "q=0.0"):
            continue
        if name in SUPPORTED and (name != "br" or brotli is not None):
            return name
    return None


def encoder_for(name: str, level: int = 3) -> Encoder:
    """A streaming encoder for a response (``level`` as http_zlib_compression_level)."""
    if name == "gzip":
        return _ZlibEncoder("gzip", 31, level)
    if name == "deflate":
        return _ZlibEncoder("deflate", 15, level)
    if name == "zstd":
        return _ZstdEncoder(level)
    if name == "lz4":
        return _Lz4Encoder()
    if name == "br":
        return _BrotliEncoder(min(level, 11))
    raise ValueError(f"unsupported response encoding {name!r}")
