"""chworkers.embedded.streaming's helpers that need no chDB: reading a body ahead."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from chworkers.embedded import streaming


def _chunks(sizes: list[int], readers: list[str]) -> Iterator[bytes]:
    for i, size in enumerate(sizes):
        readers.append(threading.current_thread().name)
        yield bytes([65 + i]) * size


def test_a_small_body_is_read_without_a_thread() -> None:
    readers: list[str] = []
    got = list(streaming.prefetch(_chunks([10, 10, 10], readers), after=100))
    assert got == [b"A" * 10, b"B" * 10, b"C" * 10]
    assert set(readers) == {threading.current_thread().name}


def test_a_body_beyond_the_threshold_is_read_ahead_by_a_thread() -> None:
    readers: list[str] = []
    got = list(streaming.prefetch(_chunks([60, 60, 60, 60], readers), after=100))
    assert got == [bytes([65 + i]) * 60 for i in range(4)]
    # Two pieces (120 bytes) pass the threshold in the caller's thread, the rest is read ahead.
    me = threading.current_thread().name
    assert readers == [me, me, "chworkers-embedded-body", "chworkers-embedded-body"]


def test_read_ahead_from_the_start_and_errors_in_order() -> None:
    def failing() -> Iterator[bytes]:
        yield b"one"
        raise ValueError("the body broke")

    stream = streaming.prefetch(failing())
    assert next(stream) == b"one"
    with pytest.raises(ValueError, match="the body broke"):
        next(stream)


def test_closing_early_stops_the_reader() -> None:
    readers: list[str] = []
    stream = streaming.prefetch(_chunks([50] * 100, readers), depth=2, after=10)
    assert next(stream) == b"A" * 50
    assert next(stream) == b"B" * 50
    stream.close()
    assert not any(t.name == "chworkers-embedded-body" for t in threading.enumerate())
    assert len(readers) < 100
