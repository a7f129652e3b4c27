"""ClickHouse's hash functions for sharding keys, column-wise over numpy arrays.

Each function computes, for a whole batch at once, exactly the UInt64 that ClickHouse's
function of the same name returns (tests/test_sharding.py compares them key by key with
the embedded engine's own evaluation):

- ``sipHash64``: SipHash-2-4 with a zero key over the value's bytes (a string's UTF-8
  bytes; an integer's little-endian bytes at its type's width). Several arguments are
  combined as ClickHouse does: ``h = sipHash64(h_1 || h_i)`` over the two little-endian
  UInt64s.
- ``intHash64``: ClickHouse's 64-bit integer mixer (MurmurHash3's finalizer) of the
  value as a UInt64 (signed values sign-extended) xor a constant salt.
- ``xxHash64``: XXH64 (seed 0) of the value's bytes, as sipHash64 reads them (the
  ``xxhash`` package); several arguments combined with CityHash's ``Hash128to64``.
- ``cityHash64``: CityHash64 v1.0.2 of a string's bytes (``clickhouse-cityhash``,
  ClickHouse's own version of CityHash), ``intHash64`` of an integer's bits
  zero-extended (ClickHouse hashes numbers so); several arguments combined with
  ``Hash128to64``.

numpy computes modulo 2**64 here, which is what the C++ does on UInt64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "U64",
    "cityhash64_bytes",
    "combine_siphash",
    "hash128_to_64",
    "int_hash64",
    "siphash64_bytes",
    "siphash64_ints",
    "siphash64_packed",
    "siphash64_strings",
    "xxhash64_bytes",
    "xxhash64_ints",
]

#: A one-dimensional array of UInt64 (keys, hashes).
U64 = np.ndarray[tuple[int], np.dtype[np.uint64]]
_Blocks = np.ndarray[tuple[int, int], np.dtype[np.uint64]]

_V0 = np.uint64(0x736F6D6570736575)
_V1 = np.uint64(0x646F72616E646F6D)
_V2 = np.uint64(0x6C7967656E657261)
_V3 = np.uint64(0x7465646279746573)
_FF = np.uint64(0xFF)
_SHIFTS = {b: (np.uint64(b), np.uint64(64 - b)) for b in (13, 16, 17, 21, 32)}


def _rotl(x: U64, b: int) -> U64:
    left, right = _SHIFTS[b]
    return (x << left) | (x >> right)


def _sipround(v: list[U64]) -> None:
    v0, v1, v2, v3 = v
    v0 += v1
    v1 = _rotl(v1, 13)
    v1 ^= v0
    v0 = _rotl(v0, 32)
    v2 += v3
    v3 = _rotl(v3, 16)
    v3 ^= v2
    v0 += v3
    v3 = _rotl(v3, 21)
    v3 ^= v0
    v2 += v1
    v1 = _rotl(v1, 17)
    v1 ^= v2
    v2 = _rotl(v2, 32)
    v[:] = [v0, v1, v2, v3]


def _siphash_blocks(blocks: _Blocks) -> U64:
    """SipHash-2-4 (zero key) of messages already padded into 64-bit words: ``blocks``
    is ``(n, words)``, the last word holding the length byte, as SipHash pads."""
    n = blocks.shape[0]
    v = [np.full(n, c, dtype=np.uint64) for c in (_V0, _V1, _V2, _V3)]
    for j in range(blocks.shape[1]):
        m = blocks[:, j]
        v[3] ^= m
        _sipround(v)
        _sipround(v)
        v[0] ^= m
    v[2] ^= _FF
    for _ in range(4):
        _sipround(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def siphash64_bytes(values: Sequence[bytes]) -> U64:
    """``sipHash64`` of each byte string (a String or FixedString value)."""
    lens = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    return siphash64_packed(b"".join(values), lens)


def siphash64_strings(values: Sequence[str]) -> U64:
    """``sipHash64`` of each string's UTF-8 bytes; an ASCII batch (the common case) is
    encoded once as a whole instead of string by string."""
    joined = "".join(values)
    if not joined.isascii():
        return siphash64_bytes([v.encode("utf-8") for v in values])
    lens = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    return siphash64_packed(joined.encode("ascii"), lens)


def siphash64_packed(data: bytes, lens: npt.NDArray[np.int64]) -> U64:
    """``sipHash64`` of byte strings given end to end in ``data``, ``lens[i]`` bytes each.

    The strings are padded into 64-bit words by numpy, grouped by their number of words,
    in chunks of rows so that numpy's temporaries stay in the CPU's caches.
    """
    n = len(lens)
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    buffer = np.frombuffer(data, dtype=np.uint8)
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=starts[1:])
    for first in range(0, n, _CHUNK):
        last = min(n, first + _CHUNK)
        chunk = buffer[starts[first] : starts[last]]
        out[first:last] = _siphash64_chunk(chunk, lens[first:last])
    return out


_CHUNK = 16384


def _siphash64_chunk(data: npt.NDArray[np.uint8], lens: npt.NDArray[np.int64]) -> U64:
    n = len(lens)
    out = np.empty(n, dtype=np.uint64)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    words = lens // 8 + 1
    for w in np.unique(words).tolist():
        rows = np.flatnonzero(words == w)
        size, m = 8 * w, len(rows)
        glens = lens[rows]
        flat = np.zeros(m * size, dtype=np.uint8)
        total = int(glens.sum())
        if total:
            within = np.arange(total) - np.repeat(np.cumsum(glens) - glens, glens)
            flat[np.repeat(np.arange(m) * size, glens) + within] = data[
                np.repeat(starts[rows], glens) + within
            ]
        flat[np.arange(m) * size + size - 1] = (glens & 0xFF).astype(np.uint8)
        blocks = flat.view("<u8").astype(np.uint64).reshape(m, w)
        out[rows] = _siphash_blocks(blocks)
    return out


def siphash64_ints(values: U64, width: int) -> U64:
    """``sipHash64`` of integers of a ``width``-byte type (1, 2, 4 or 8), given as their
    two's complement bits in a UInt64 array (the value truncated to ``width`` bytes)."""
    length = np.uint64(width) << np.uint64(56)
    if width == 8:
        blocks = np.stack([values, np.full(len(values), length, dtype=np.uint64)], axis=1)
    else:
        mask = np.uint64((1 << (8 * width)) - 1)
        blocks = ((values & mask) | length).reshape(-1, 1)
    return _siphash_blocks(blocks)


def combine_siphash(first: U64, second: U64) -> U64:
    """ClickHouse's ``combineHashes`` for sipHash64: the hash of the 16 bytes ``first``,
    ``second`` (little-endian)."""
    length = np.full(len(first), np.uint64(16) << np.uint64(56), dtype=np.uint64)
    return _siphash_blocks(np.stack([first, second, length], axis=1))


_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_INT_HASH_SALT = np.uint64(0x4CF2D2BAAE6DA887)


def int_hash64(values: U64) -> U64:
    """``intHash64`` of each value (given as a UInt64: signed values sign-extended)."""
    x = values ^ _INT_HASH_SALT
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


def xxhash64_bytes(values: Sequence[bytes]) -> U64:
    """``xxHash64`` of each byte string."""
    from xxhash import xxh64_intdigest  # imported late: only xxHash64 keys need it

    return np.fromiter(map(xxh64_intdigest, values), dtype=np.uint64, count=len(values))


def xxhash64_ints(values: U64, width: int) -> U64:
    """``xxHash64`` of integers of a ``width``-byte type (their little-endian bytes)."""
    raw = values.astype(f"<u{width}").tobytes()
    return xxhash64_bytes([raw[i : i + width] for i in range(0, len(raw), width)])


def cityhash64_bytes(values: Sequence[bytes]) -> U64:
    """``cityHash64`` of each byte string (CityHash64 v1.0.2)."""
    # Imported late: only cityHash64 keys need it.
    from clickhouse_cityhash.cityhash import CityHash64  # type: ignore[import-untyped]

    return np.fromiter(map(CityHash64, values), dtype=np.uint64, count=len(values))


_KMUL = np.uint64(0x9DDFEA08EB382D69)
_S47 = np.uint64(47)


def hash128_to_64(low: U64, high: U64) -> U64:
    """CityHash's ``Hash128to64`` of (``low``, ``high``): how ClickHouse combines the
    hashes of several arguments of cityHash64 and xxHash64."""
    a = (low ^ high) * _KMUL
    a ^= a >> _S47
    b = (high ^ a) * _KMUL
    b ^= b >> _S47
    return b * _KMUL
