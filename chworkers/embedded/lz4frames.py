"""An lz4 request body passed on to chDB still compressed, in whole blocks.

chDB decompresses lz4 itself (``FROM INFILE ... COMPRESSION 'lz4'``) for next to nothing,
where python-lz4 costs the endpoint about 40 ms of CPU per 56 MB of data. But ClickHouse's
lz4 reader is lenient: input that ends in the middle of a frame, or garbage where the
next frame should start, reads as a clean end of the data, so a body cut short would be
inserted up to where it stopped. This module reads the frame structure (headers and
block sizes, no decompression): it hands on only whole headers and whole blocks,
refuses what is not an LZ4 frame, and knows what to write after the last whole piece to
make chDB's reader fail for certain (a block size larger than any frame allows), so a
body cut short or broken inserts nothing.

The format: https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md
"""

from __future__ import annotations

from chworkers.embedded.exceptions import CANNOT_DECOMPRESS, clickhouse_error

_MAGIC = 0x184D2204
_SKIPPABLE = 0x184D2A50  # to 0x184D2A5F
#: The largest block of each block-size id (the BD byte's bits 4-6).
_MAX_BLOCK = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}
#: A frame header that any lz4 reader accepts (version 01, independent blocks, 64 KiB:
#: what ``lz4.frame.compress(b"", store_size=False)`` begins with).
_HEADER = bytes.fromhex("04224d18604082")
#: A block size no frame allows: chDB's reader fails on it (ERROR_maxBlockSize_invalid).
_BAD_BLOCK = (0x7FFFFFF0).to_bytes(4, "little")


class Lz4Frames:
    """Splits an lz4 frame stream into the part that ends on a whole piece, and the rest."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # in _buf: where the next piece starts
        self._in_frame = False
        self._max_block = 0
        self._block_checksum = False
        self._content_checksum = False
        self.frames = 0

    def feed(self, data: bytes) -> memoryview:
        """Add ``data``; the bytes now complete (whole headers and blocks) to pass on.

        The view is valid until the next call. Raises ServerError (CANNOT_DECOMPRESS)
        for bytes that are no LZ4 frame.
        """
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        end = self._scan()
        self._pos = end
        return memoryview(self._buf)[:end]

    def finish(self) -> None:
        """The body is over: raise if it ended within a frame (or a piece)."""
        if self._in_frame or self._pos < len(self._buf):
            raise self._broken("the body ends in the middle of a compressed frame")

    def poison(self) -> bytes:
        """What makes chDB's reader fail after the last whole piece passed on."""
        return _BAD_BLOCK if self._in_frame else _HEADER + _BAD_BLOCK

    def _scan(self) -> int:
        buf, pos, n = self._buf, self._pos, len(self._buf)
        while True:
            if not self._in_frame:
                if n - pos < 8:
                    if n - pos >= 4 and self._magic(pos) not in (_MAGIC, *_skippable()):
                        raise self._broken("not an LZ4 frame")
                    return pos
                magic = self._magic(pos)
                if magic & 0xFFFFFFF0 == _SKIPPABLE:
                    size = 8 + int.from_bytes(buf[pos + 4 : pos + 8], "little")
                    if n - pos < size:
                        return pos
                    pos += size
                    continue
                if magic != _MAGIC:
                    raise self._broken("not an LZ4 frame")
                flags, bd = buf[pos + 4], buf[pos + 5]
                if flags >> 6 != 1 or (bd >> 4) & 7 not in _MAX_BLOCK:
                    raise self._broken("an LZ4 frame header of an unknown version")
                size = 7 + (8 if flags & 0x08 else 0) + (4 if flags & 0x01 else 0)
                if n - pos < size:
                    return pos
                self._max_block = _MAX_BLOCK[(bd >> 4) & 7]
                self._block_checksum = bool(flags & 0x10)
                self._content_checksum = bool(flags & 0x04)
                self._in_frame = True
                self.frames += 1
                pos += size
            if n - pos < 4:
                return pos
            word = int.from_bytes(buf[pos : pos + 4], "little")
            if word == 0:  # the end mark, then the frame's checksum
                size = 4 + (4 if self._content_checksum else 0)
                if n - pos < size:
                    return pos
                self._in_frame = False
                pos += size
                continue
            length = word & 0x7FFFFFFF
            if length > self._max_block:
                raise self._broken(
                    f"a block of {length} bytes in a frame of at most {self._max_block}"
                )
            size = 4 + length + (4 if self._block_checksum else 0)
            if n - pos < size:
                return pos
            pos += size

    def _magic(self, pos: int) -> int:
        return int.from_bytes(self._buf[pos : pos + 4], "little")

    @staticmethod
    def _broken(why: str) -> Exception:
        return clickhouse_error(
            CANNOT_DECOMPRESS, f"Cannot decompress the request body (Content-Encoding: lz4): {why}"
        )


def _skippable() -> range:
    return range(_SKIPPABLE, _SKIPPABLE + 16)
