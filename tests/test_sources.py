from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import wait_for

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.filesource import FileSource
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.sources import StreamSource
from chworkers.daemon.spool import Spool, SpooledBatch
from chworkers.errors import ConfigError


class Pipeline:
    """A real spool, batcher and checkpoint store; batches are collected, not inserted."""

    def __init__(self, root: Path, max_delay: float = 0.05) -> None:
        self.spool = Spool(root / "spool", SpoolSettings(fsync=False))
        self.checkpoints = Checkpoints(root / "positions")
        self.batches: list[SpooledBatch] = []
        self.batcher = Batcher(
            self.spool, self.on_batch, limits=BatchLimits(max_rows=1000, max_delay=max_delay)
        )

    def on_batch(self, batch: SpooledBatch) -> None:
        self.checkpoints.commit_batch(batch)
        self.batches.append(batch)

    def records(self) -> bytes:
        self.batcher.flush()
        return b"".join(b.payload for b in sorted(self.batches, key=lambda b: b.seq))

    def file_source(self, pattern: str, **kw: object) -> FileSource:
        return FileSource(
            [pattern],
            checkpoints=self.checkpoints,
            name="logs",
            table="events",
            format="JSONEachRow",
            batcher=self.batcher,
            poll_interval=0.02,
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path)
    yield p
    p.batcher.close()


def lines(start: int, stop: int) -> bytes:
    return b"".join(b'{"n":%d}\n' % i for i in range(start, stop))


def test_stream_source_reads_to_end(pipeline: Pipeline) -> None:
    data = lines(0, 5000) + b'{"n":5000}'  # last line without newline
    source = StreamSource(
        io.BytesIO(data),
        name="stdin",
        table="events",
        format="JSONEachRow",
        batcher=pipeline.batcher,
        read_size=4096,
    )
    source.run(threading.Event())
    assert pipeline.records() == data + b"\n"
    assert source.rows == 5001
    assert len(pipeline.batches) >= 5
    assert all(b.rows < 1000 + 4096 // 9 for b in pipeline.batches)  # cut within one read


def test_files_are_read_once_and_resume_from_checkpoint(pipeline: Pipeline, tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(lines(0, 10))
    (tmp_path / "b.json").write_bytes(lines(10, 20))
    pipeline.file_source(str(tmp_path / "*.json")).run(threading.Event())
    assert pipeline.records() == lines(0, 20)

    with open(tmp_path / "a.json", "ab") as fh:
        fh.write(lines(20, 25))
    before = len(pipeline.records())
    pipeline.file_source(str(tmp_path / "*.json")).run(threading.Event())
    assert pipeline.records()[before:] == lines(20, 25)


def test_follow_tails_rotation_and_truncation(pipeline: Pipeline, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(lines(0, 3))
    stop = threading.Event()
    source = pipeline.file_source(str(log), follow=True)
    thread = threading.Thread(target=source.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: pipeline.records() == lines(0, 3))
        with open(log, "ab") as fh:
            fh.write(b'{"n":3}')  # half a line: held back until its newline comes
            fh.flush()
            time.sleep(0.1)
            assert pipeline.records() == lines(0, 3)
            fh.write(b"\n")
        wait_for(lambda: pipeline.records() == lines(0, 4))

        os.rename(log, tmp_path / "app.log.1")  # rotation
        with open(tmp_path / "app.log.1", "ab") as fh:
            fh.write(lines(4, 6))  # late writes to the old file are not lost
        log.write_bytes(lines(6, 8))
        wait_for(lambda: pipeline.records() == lines(0, 8))

        log.write_bytes(lines(8, 9))  # copytruncate: smaller than our offset
        wait_for(lambda: pipeline.records() == lines(0, 9))
    finally:
        stop.set()
        thread.join(5)


def test_crash_after_spool_before_checkpoint_does_not_reread(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_bytes(lines(0, 100))
    first = Pipeline(tmp_path)
    # Simulate a crash between spooling and saving the checkpoint: spool, never commit.
    first.batcher.on_batch = first.batches.append
    first.file_source(str(tmp_path / "in.json")).run(threading.Event())
    first.batcher.close()
    assert first.checkpoints.load("logs") == {}

    second = Pipeline(tmp_path)
    replay = second.spool.recover()
    second.checkpoints.recover(replay)
    second.file_source(str(tmp_path / "in.json")).run(threading.Event())
    second.batcher.close()
    assert b"".join(b.payload for b in replay) == lines(0, 100)
    assert second.batches == []  # nothing read twice


def test_unreadable_file_is_reported_and_others_go_on(pipeline: Pipeline, tmp_path: Path) -> None:
    (tmp_path / "ok.json").write_bytes(lines(0, 2))
    os.symlink(tmp_path / "missing", tmp_path / "broken.json")
    errors: list[str] = []
    source = pipeline.file_source(
        str(tmp_path / "*.json"), on_error=lambda name, msg: errors.append(msg)
    )
    source.run(threading.Event())
    assert pipeline.records() == lines(0, 2)
    assert errors and "broken.json" in errors[0]


def test_bad_format_is_refused_up_front(pipeline: Pipeline) -> None:
    with pytest.raises(ConfigError, match="XML"):
        StreamSource(io.BytesIO(), name="s", table="t", format="XML", batcher=pipeline.batcher)


def test_generator_is_deterministic_and_counted(tmp_path: Path) -> None:
    import json

    from chworkers.daemon.generator import GeneratorSource

    payloads = []
    for run in range(2):
        p = Pipeline(tmp_path / str(run))
        GeneratorSource(
            count=2500,
            chunk_rows=1000,
            start=1_764_547_200,
            name="gen",
            table="events",
            batcher=p.batcher,
        ).run(threading.Event())
        payloads.append(p.records())
        p.batcher.close()
    assert payloads[0] == payloads[1]
    rows = [json.loads(line) for line in payloads[0].splitlines()]
    assert len(rows) == 2500
    assert set(rows[0]) == {"ts", "user_id", "event", "value", "url"}
    assert [rows[0]["ts"], rows[-1]["ts"]] == [1_764_547_200, 1_764_547_202]


def test_generator_rate_is_respected(tmp_path: Path) -> None:
    from chworkers.daemon.generator import GeneratorSource

    p = Pipeline(tmp_path)
    started = time.monotonic()
    GeneratorSource(
        count=300, rate=1000, chunk_rows=100, name="gen", table="events", batcher=p.batcher
    ).run(threading.Event())
    assert time.monotonic() - started >= 0.15
    p.batcher.close()
