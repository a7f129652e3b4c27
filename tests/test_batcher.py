from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from waiting import wait_for

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch
from chworkers.errors import ChworkersError, SpoolFullError


class Collector:
    def __init__(self) -> None:
        self.batches: list[SpooledBatch] = []
        self.event = threading.Event()

    def __call__(self, batch: SpooledBatch) -> None:
        assert batch.path is not None and batch.path.exists()  # spooled before handed on
        self.batches.append(batch)
        self.event.set()


def test_cut_by_rows_keeps_bytes_and_meta(tmp_path: Path) -> None:
    got = Collector()
    batcher = Batcher(Spool(tmp_path), got, limits=BatchLimits(max_rows=3, max_delay=60))
    tickets = [
        batcher.add("t", b'{"i":%d}\n' % i, 1, format="JSONEachRow", meta={"offset": i})
        for i in range(3)
    ]
    for ticket in tickets:
        ticket.wait(5)
    assert len(got.batches) == 1
    batch = got.batches[0]
    assert batch.payload == b'{"i":0}\n{"i":1}\n{"i":2}\n'
    assert batch.rows == 3
    assert batch.meta == {"offset": 2}
    assert {t.batch_seq for t in tickets} == {batch.seq}
    batcher.close()


def test_cut_by_bytes(tmp_path: Path) -> None:
    got = Collector()
    batcher = Batcher(Spool(tmp_path), got, limits=BatchLimits(max_bytes=100, max_delay=60))
    first = batcher.add("t", b"x" * 40 + b"\n", 1, format="CSV")
    assert got.batches == []
    batcher.add("t", b"y" * 58 + b"\n", 1, format="CSV").wait(5)  # 100 bytes: full
    assert len(got.batches) == 1 and got.batches[0].rows == 2 and first.done()
    # One more byte than fits: what is open is cut, the record starts the next batch.
    batcher.add("t", b"z" * 60 + b"\n", 1, format="CSV")
    batcher.add("t", b"w" * 60 + b"\n", 1, format="CSV")
    wait_for(lambda: len(got.batches) == 2, timeout=5, what="the open batch cut")
    assert got.batches[1].payload == b"z" * 60 + b"\n"
    batcher.close()


def test_cut_by_delay(tmp_path: Path) -> None:
    got = Collector()
    batcher = Batcher(Spool(tmp_path), got, limits=BatchLimits(max_delay=0.2))
    started = time.monotonic()
    batcher.add("t", b"1\n", 1, format="CSV").wait(5)
    assert 0.15 <= time.monotonic() - started < 15  # generous: CI machines are busy
    # The ticket settles once the batch is spooled, just before on_batch is called.
    wait_for(lambda: len(got.batches) == 1, timeout=15, what="on_batch called")
    assert got.batches[0].rows == 1
    batcher.close()


def test_tables_and_settings_are_separate_batches(tmp_path: Path) -> None:
    got = Collector()
    batcher = Batcher(Spool(tmp_path), got, limits=BatchLimits(max_delay=60))
    batcher.add("a", b"1\n", 1, format="CSV")
    batcher.add("b", b"2\n", 1, format="CSV")
    batcher.add("a", b"3\n", 1, format="CSV", settings={"input_format_skip_unknown_fields": 1})
    batcher.close()
    assert sorted((b.table, b.payload) for b in got.batches) == [
        ("a", b"1\n"),
        ("a", b"3\n"),
        ("b", b"2\n"),
    ]


def test_full_spool_fails_the_ticket_not_the_batcher(tmp_path: Path) -> None:
    got = Collector()
    spool = Spool(tmp_path, SpoolSettings(max_bytes=2000, policy="reject"))
    batcher = Batcher(spool, got, limits=BatchLimits(max_rows=1, max_delay=60))
    batcher.add("t", b"first\n", 1, format="CSV").wait(5)
    with pytest.raises(SpoolFullError):
        batcher.add("t", b"x" * 2000 + b"\n", 1, format="CSV").wait(5)
    spool.remove(got.batches[0])
    batcher.add("t", b"ok\n", 1, format="CSV").wait(5)
    assert [b.payload for b in got.batches] == [b"first\n", b"ok\n"]
    batcher.close()


def test_close_flushes_and_rejects_later_adds(tmp_path: Path) -> None:
    got = Collector()
    batcher = Batcher(Spool(tmp_path), got, limits=BatchLimits(max_delay=60))
    ticket = batcher.add("t", b"1\n", 1, format="CSV")
    assert batcher.pending() == (1, 2)
    batcher.close()
    assert ticket.done()
    assert len(got.batches) == 1
    with pytest.raises(ChworkersError, match="closed"):
        batcher.add("t", b"2\n", 1, format="CSV")


def test_failing_consumer_leaves_batch_in_spool(tmp_path: Path) -> None:
    def boom(batch: SpooledBatch) -> None:
        raise RuntimeError("queue gone")

    batcher = Batcher(Spool(tmp_path), boom, limits=BatchLimits(max_rows=1))
    batcher.add("t", b"1\n", 1, format="CSV").wait(5)
    batcher.close()
    assert [b.payload for b in Spool(tmp_path).recover()] == [b"1\n"]


def test_flush_waits_for_a_cut_the_timer_has_in_progress(tmp_path: Path) -> None:
    class SlowSpool(Spool):
        def put(self, *args: object, **kwargs: object) -> SpooledBatch:  # type: ignore[override]
            time.sleep(0.3)  # the timer thread is busy spooling when flush() is called
            return super().put(*args, **kwargs)  # type: ignore[arg-type]

    got = Collector()
    batcher = Batcher(SlowSpool(tmp_path), got, limits=BatchLimits(max_delay=0.01))
    batcher.add("t", b"1\n", 1, format="CSV")
    time.sleep(0.1)  # the timer has taken the buffer and is in put()
    batcher.flush()
    assert [b.payload for b in got.batches] == [b"1\n"]
    batcher.close()
