"""numpy's counts of a byte (:mod:`chworkers.vectorscan`) are bytes.count's, and the
framing that uses them frames and counts as without them."""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
from collections.abc import Iterator

import numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from chworkers import vectorscan
from chworkers.daemon import framing
from chworkers.daemon.framing import Framer, count_lines, pieces


@contextlib.contextmanager
def vectorized(on: bool = True) -> Iterator[None]:
    """numpy loaded (``on``) or not, for ranges of any length."""
    saved = vectorscan._numpy, vectorscan.MIN_BYTES
    vectorscan._numpy, vectorscan.MIN_BYTES = (numpy if on else None), 0
    try:
        yield
    finally:
        vectorscan._numpy, vectorscan.MIN_BYTES = saved


data_st = st.lists(
    st.sampled_from([b"\n", b"\n\n", b"x", b"ab", b'{"a":1}', b"\n\n\n"]), max_size=80
)


@settings(max_examples=300, deadline=None)
@given(parts=data_st, a=st.integers(0, 300), b=st.integers(0, 300), n=st.integers(1, 40))
def test_counts_and_nth_are_bytes_counts(parts: list[bytes], a: int, b: int, n: int) -> None:
    data = b"".join(parts)
    start, end = sorted((a % (len(data) + 1), b % (len(data) + 1)))
    piece = data[start:end]
    with vectorized():
        counted = vectorscan.counts(data, 0x0A, start, end)
        found = vectorscan.nth(data, 0x0A, n, start, end)
    pairs = sum(1 for i in range(1, len(piece)) if piece[i] == piece[i - 1] == 0x0A)
    assert counted == (piece.count(b"\n"), pairs)
    at = [i for i, c in enumerate(piece) if c == 0x0A]
    assert found == ((end, len(at)) if len(at) <= n else (start + at[n - 1] + 1, n))


def test_nothing_is_vectorized_until_numpy_is_loaded_nor_for_short_ranges() -> None:
    with vectorized(False):
        assert vectorscan.counts(b"a\nb\n" * 100, 0x0A, 0, 400) is None
        assert vectorscan.nth(b"a\nb\n" * 100, 0x0A, 3, 0, 400) is None
    with vectorized():
        vectorscan.MIN_BYTES = 1000
        assert vectorscan.counts(b"a\nb\n" * 100, 0x0A, 0, 400) is None
        assert vectorscan.counts(b"a\nb\n" * 300, 0x0A, 0, 1200) == (600, 0)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.sampled_from([b"", b"{}", b'{"a":1}', b"x" * 40]), min_size=1, max_size=400),
    ended=st.booleans(),
    max_rows=st.integers(min_value=1, max_value=300),
    max_bytes=st.integers(min_value=1, max_value=20_000),
    first=st.none() | st.tuples(st.integers(0, 300), st.integers(0, 20_000)),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=6),
)
def test_framing_counts_and_cuts_the_same_with_numpy(
    lines: list[bytes],
    ended: bool,
    max_rows: int,
    max_bytes: int,
    first: tuple[int, int] | None,
    cuts: list[int],
) -> None:
    """Runs of records with empty lines among them: the pieces, their counts and what
    the framer returns per read are the same with numpy's counts as with bytes.count."""
    records = b"\n".join(lines) + (b"\n" if ended else b"")
    points = sorted({c % (len(records) + 1) for c in cuts})
    reads = [records[x:y] for x, y in itertools.pairwise([0, *points, len(records)])]
    results = []
    for on in (False, True):
        with vectorized(on):
            framer = Framer("JSONEachRow")
            fed = [framer.feed(chunk) for chunk in reads] + [framer.finish()]
            results.append(
                (
                    list(pieces(records, "JSONEachRow", max_rows, max_bytes, first=first)),
                    count_lines(records),
                    framing._blank_lines(records),
                    fed,
                )
            )
    assert results[0] == results[1]
    assert results[1][1] == sum(1 for line in records.split(b"\n")[:-1] if line)


def test_the_daemons_modules_do_not_import_numpy() -> None:
    """numpy is the daemon's to load once it is ready (vectorscan.load_in_background):
    importing the daemon and the modules that count with it does not."""
    code = (
        "import sys, chworkers.daemon.service, chworkers.daemon.framing, chworkers.vectorscan\n"
        "assert 'numpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_load_in_background_loads_numpy_once() -> None:
    saved = vectorscan._numpy, vectorscan._loader
    vectorscan._numpy, vectorscan._loader = None, None
    try:
        vectorscan.load_in_background()
        loader = vectorscan._loader
        assert loader is not None
        loader.join(60)
        assert vectorscan.loaded() and vectorscan.module() is numpy
        vectorscan.load_in_background()
        assert vectorscan._loader is loader  # not a second thread
    finally:
        vectorscan._numpy, vectorscan._loader = saved
