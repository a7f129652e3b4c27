"""A submit that raises something unexpected costs the batch an attempt, not the dispatcher.

The dispatcher's thread caught only chworkers' own errors from ``submit``; anything else
(a bug, a MemoryError while encoding, a closed pipe) ended the thread, and every batch
after it stayed in the spool until a restart while health said "failing".
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

from chworkers.daemon.dispatch import Dispatcher
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch


def test_an_unexpected_error_from_submit_is_a_failed_attempt(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    calls: list[int] = []

    def submit(batch: SpooledBatch) -> Future[Any]:
        calls.append(batch.seq)
        if len(calls) == 1:
            raise RuntimeError("a bug in the submit path")
        done: Future[Any] = Future()
        done.set_result(None)
        return done

    dispatcher = Dispatcher(
        spool, submit, SpoolSettings(retry_backoff_max=0.1), initial_backoff=0.05
    )
    dispatcher.start()
    try:
        first = spool.put("t", b"1\n", format="CSV", rows=1)
        dispatcher.add(first)
        dispatcher.add(spool.put("t", b"2\n", format="CSV", rows=1))
        assert dispatcher.wait_idle(30), f"batches left: {dispatcher.backlog()}"
        assert dispatcher.problems() == []
    finally:
        dispatcher.stop()
    assert calls.count(first.seq) == 2  # failed once, then confirmed
    assert spool.recover() == []
