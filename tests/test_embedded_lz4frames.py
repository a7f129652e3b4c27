"""chworkers.embedded.lz4frames: an lz4 body handed on in whole pieces, and its poison."""

from __future__ import annotations

import random

import lz4.frame
import pytest

from chworkers.embedded.lz4frames import Lz4Frames
from chworkers.errors import ServerError

DATA = b"".join(b"%d\tsome text %d\n" % (i, i % 97) for i in range(60_000))


def frames_of(data: bytes, **kwargs: object) -> bytes:
    """Two frames, as clickhouse-connect sends one per block."""
    half = len(data) // 2
    return lz4.frame.compress(data[:half], **kwargs) + lz4.frame.compress(data[half:], **kwargs)


def passed_on(body: bytes, sizes: list[int]) -> tuple[bytes, Lz4Frames]:
    frames = Lz4Frames()
    out = bytearray()
    at = 0
    for size in sizes:
        view = frames.feed(body[at : at + size])
        out += view
        view.release()
        at += size
    return bytes(out), frames


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"block_size": lz4.frame.BLOCKSIZE_MAX4MB, "content_checksum": True},
        {"block_checksum": True, "store_size": False, "block_linked": False},
    ],
)
def test_a_whole_body_passes_on_unchanged_however_it_arrives(kwargs: dict[str, object]) -> None:
    body = frames_of(DATA, **kwargs)
    rng = random.Random(7)
    for _ in range(20):
        sizes: list[int] = []
        while sum(sizes) < len(body):
            sizes.append(rng.choice([1, 3, 7, 100, 4096, 65_536, 300_000]))
        out, frames = passed_on(body, sizes)
        frames.finish()
        assert out == body
        assert frames.frames == 2


def test_only_whole_pieces_pass_and_a_cut_body_is_refused() -> None:
    body = frames_of(DATA)
    for cut in (5, 11, 200, len(body) // 2 + 3, len(body) - 2):
        out, frames = passed_on(body[:cut], [cut])
        assert len(out) < cut  # the unfinished header or block is held back
        with pytest.raises(ServerError, match="middle of a compressed frame") as err:
            frames.finish()
        assert err.value.code == 271


def test_the_poison_follows_where_the_body_stopped() -> None:
    first = lz4.frame.compress(DATA)
    out, frames = passed_on(first, [len(first)])  # a whole frame: between frames
    assert out == first
    assert frames.poison() == bytes.fromhex("04224d18604082") + bytes.fromhex("f0ffff7f")
    out, frames = passed_on(first[:-4], [len(first) - 4])  # all but the end mark
    assert frames.poison() == bytes.fromhex("f0ffff7f")


def test_what_is_no_lz4_is_refused() -> None:
    for body in (b"\x00\xff garbage!", b"INSERT INTO t", lz4.frame.compress(b"x") + b"junkjunk"):
        with pytest.raises(ServerError, match="not an LZ4 frame") as err:
            passed_on(body, [len(body)])
        assert err.value.code == 271


def test_skippable_frames_pass() -> None:
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    body = skippable + lz4.frame.compress(DATA)
    out, frames = passed_on(body, [3, 9, len(body) - 12])
    frames.finish()
    assert out == body
