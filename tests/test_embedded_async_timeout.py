"""The asynchronous insert queue's busy timeout, as ClickHouse's ``getBusyWaitTimeoutMs``:
fixed at the maximum unless adaptive; adaptive, it starts at the minimum, grows while
inserts come faster than the minimum, shrinks once they and the flushes slow down, and
a batch is flushed at once when inserts stopped for longer than the maximum."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chworkers.embedded.asyncqueue import AsyncInsertQueue, Entry, Key, Limits

ADAPTIVE = Limits(busy_max_ms=200, busy_min_ms=50)


@pytest.fixture
def queue() -> Iterator[AsyncInsertQueue]:
    q = AsyncInsertQueue(lambda key, limits, entries: [e.finish() for e in entries])
    yield q
    q.close(flush=False)


def test_fixed_without_adaptive(queue: AsyncInsertQueue) -> None:
    assert queue._timeout_ms(Limits(busy_max_ms=300, adaptive=False), 100.0) == 300


def test_starts_at_the_minimum_and_grows_while_inserts_are_frequent(
    queue: AsyncInsertQueue,
) -> None:
    assert queue._timeout_ms(ADAPTIVE, 100.0) == 50
    queue._last_insert, queue._flush_times = 100.0, (99.0, 99.5)
    queue._busy_timeout_ms = 50
    assert queue._timeout_ms(ADAPTIVE, 100.01) == 60  # within 50 ms: +20 %
    queue._busy_timeout_ms = 190
    assert queue._timeout_ms(ADAPTIVE, 100.01) == 200  # never above the maximum


def test_shrinks_when_inserts_and_flushes_slow_down(queue: AsyncInsertQueue) -> None:
    queue._busy_timeout_ms = 120
    queue._last_insert, queue._flush_times = 100.0, (100.0, 101.0)
    assert queue._timeout_ms(ADAPTIVE, 101.0) == 100  # / 1.2
    queue._busy_timeout_ms = 55
    assert queue._timeout_ms(ADAPTIVE, 101.0) == 50  # never below the minimum
    queue._flush_times = (100.0, 100.01)  # flushes still close together: kept
    queue._busy_timeout_ms = 120
    assert queue._timeout_ms(ADAPTIVE, 101.0) == 120


def test_a_batch_after_a_pause_is_flushed_at_once(queue: AsyncInsertQueue) -> None:
    queue._last_insert, queue._flush_times = 100.0, (100.0, 101.0)
    assert queue._stale(ADAPTIVE, 101.0)
    assert not queue._stale(ADAPTIVE, 100.1)
    assert not queue._stale(Limits(adaptive=False), 101.0)
    entry = Entry(b"", "", "q1")
    queue.push(Key("db", "INSERT INTO t", "TSV", ()), ADAPTIVE, entry)  # stale: flushed now
    entry.wait(30)
