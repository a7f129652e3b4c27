"""The sample checksum of a reference's range: the same whether its bytes come in the
chunks they were read in (when the batch is spooled) or whole (when it is loaded)."""

from __future__ import annotations

import random

from chworkers.daemon import extents
from chworkers.daemon.extents import SAMPLE, SAMPLE_EVERY, Extent, sample_crc


def test_chunked_and_whole_bytes_have_one_sample_checksum() -> None:
    rng = random.Random(7)
    for size in (0, 1, SAMPLE - 1, SAMPLE, SAMPLE + 1, SAMPLE_EVERY + 3 * SAMPLE, 3 * SAMPLE_EVERY):
        data = rng.randbytes(size)
        for _ in range(5):
            cuts = sorted(rng.sample(range(size + 1), k=min(size + 1, rng.randrange(1, 40))))
            chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, size], strict=True)]
            assert sample_crc(chunks) == sample_crc(data), (size, cuts)


def test_the_samples_see_a_change_at_the_start_the_end_and_every_mib() -> None:
    data = bytearray(random.Random(1).randbytes(2 * SAMPLE_EVERY + 10_000))
    whole = sample_crc(bytes(data))
    for at in (0, SAMPLE_EVERY + 5, 2 * SAMPLE_EVERY + 1, len(data) - 1):
        changed = bytearray(data)
        changed[at] ^= 1
        assert sample_crc(bytes(changed)) != whole, at


def test_merged_records_carry_the_checksum_of_their_bytes() -> None:
    def piece(start: int, end: int) -> Extent:
        return Extent("f", 1, 2, 0, 0, start, end)

    a, b, c = b"x" * 5000, b"y" * 7000, b"z" * 10
    merged = extents.merge_records([(piece(0, 5000), a), (piece(5000, 12000), b)])
    assert merged == (Extent("f", 1, 2, 0, 0, 0, 12000, sample=sample_crc(a + b)),)
    apart = extents.merge_records([(piece(0, 5000), a), (piece(6000, 6010), c)])
    assert [e.sample for e in apart] == [sample_crc(a), sample_crc(c)]
