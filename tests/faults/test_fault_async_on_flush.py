"""The embedded endpoint's asynchronous insert queue when its on_flush callback (the
server's statistics) raises: the batch is still marked flushed and no longer running,
so SYSTEM FLUSH ASYNC INSERT QUEUE (flush_all) returns. The cleanup ran after the
callback, not in ``finally``: flush_all waited for that batch forever."""

from __future__ import annotations

import logging
import threading

import pytest

from chworkers.embedded.asyncqueue import AsyncInsertQueue, Entry, Key, Limits

pytestmark = pytest.mark.timeout(60)


def test_flush_all_returns_when_on_flush_raises(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def on_flush() -> None:
        calls.append(1)
        raise RuntimeError("statistics broken")

    queue = AsyncInsertQueue(
        lambda key, limits, entries: [e.finish(rows=1) for e in entries], on_flush=on_flush
    )
    try:
        key = Key("default", "INSERT INTO t FORMAT JSONEachRow", "JSONEachRow", ())
        entry = Entry(b'{"k":1}\n', "", "q1")
        queue.push(key, Limits(busy_max_ms=60_000, adaptive=False), entry)
        with caplog.at_level(logging.ERROR, logger="chworkers.embedded.asyncqueue"):
            done = threading.Thread(target=queue.flush_all, daemon=True)
            done.start()
            done.join(20)
            assert not done.is_alive(), "flush_all waits for a batch whose callback raised"
        assert entry.finished and entry.error is None and entry.rows == 1
        assert calls == [1]
        assert "on_flush callback failed" in caplog.text
        queue.flush_all()  # nothing running is left to wait for
    finally:
        queue.close(flush=False)  # without the fix, close() would wait for it too
