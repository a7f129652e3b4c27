"""A followed glob of many files holds at most ``max_open_files`` of them open.

A file source with ``follow = true`` opened every file its patterns matched and kept each
open for as long as it existed: a directory of a few thousand logs ran the daemon into
``ulimit -n`` (systemd's default soft limit is 1,024), every open after that failed
("Too many open files"), the spool and ClickHouse connections with them. Now files are
closed when idle or to make room, and reopened by path and identity when they grow,
without losing or repeating a line across a close and reopen, a rotation (rename, to a
name the patterns match or not, and a new file), a ``copytruncate`` or a deletion.

Also here: a followed file renamed to a name its patterns match (``app.log`` to
``app.log.1``) was taken for a new file and read again from its start, every line of
it spooled twice.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from daemonthread import daemon_config
from prometheus_client import CollectorRegistry
from tomlfile import to_toml
from waiting import wait_for

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.closedfiles import RESERVED_DESCRIPTORS, fit_open_files
from chworkers.daemon.filesource import FileSource
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch
from chworkers.embedded import EmbeddedClickHouse
from chworkers.ops.metrics import Metrics


def line(n: int) -> bytes:
    return b'{"n":%d}\n' % n


class Pipeline:
    """A real spool, batcher and checkpoint store; batches are collected, not inserted."""

    def __init__(self, root: Path) -> None:
        self.spool = Spool(root / "spool", SpoolSettings(fsync=False))
        self.checkpoints = Checkpoints(root / "positions")
        self.batches: list[SpooledBatch] = []
        limits = BatchLimits(max_rows=100_000, max_delay=0.02)
        self.batcher = Batcher(self.spool, self.on_batch, limits=limits)

    def on_batch(self, batch: SpooledBatch) -> None:
        self.checkpoints.commit_batch(batch)
        self.batches.append(batch)

    def follow(self, paths: list[str], **options: Any) -> FileSource:
        """A source following ``paths`` into this pipeline (polled every 10 ms unless
        ``options`` say otherwise)."""
        settings: dict[str, Any] = {"poll_interval": 0.01, **options}
        return FileSource(
            paths,
            checkpoints=self.checkpoints,
            name="logs",
            table="events",
            format="JSONEachRow",
            batcher=self.batcher,
            follow=True,
            **settings,
        )

    def numbers(self) -> list[int]:
        self.batcher.flush()
        payload = b"".join(b.payload for b in sorted(self.batches, key=lambda b: b.seq))
        return sorted(int(x[5:-1]) for x in payload.split())


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path)
    yield p
    p.batcher.close(timeout=10)


def descriptors() -> dict[str, str]:
    """This process's descriptors: what each is open on."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return found


def open_in(directory: Path) -> int:
    """Descriptors this process holds on files in ``directory`` (not on the directory
    itself, which matching the patterns lists), at one moment: two listings in a row
    that agree (a descriptor closed and its number reused during one would count twice)."""
    first = descriptors()
    while (second := descriptors()) != first:
        first = second
    return sum(target.startswith(f"{directory}/") for target in first.values())


def test_followed_files_beyond_the_limit_lose_and_repeat_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    data = tmp_path / "logs"
    data.mkdir()
    files = [data / f"f{i:02d}.log" for i in range(12)]
    for i, f in enumerate(files):
        f.write_bytes(line(i))
    metrics = Metrics(CollectorRegistry())
    source = pipeline.follow(
        [str(data / "*.log")],
        max_open_files=3,
        close_idle_after=0.05,
        metrics=metrics,
    )

    def counted(state: str) -> float:
        return float(metrics.source_files.labels(source="logs", state=state)._value.get())

    stop = threading.Event()
    most = [0]

    def watch() -> None:
        while not stop.is_set():
            most[0] = max(most[0], open_in(data))
            time.sleep(0.002)

    threads = [threading.Thread(target=source.run, args=(stop,)), threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    expected = list(range(12))
    try:
        wait_for(lambda: pipeline.numbers() == expected, timeout=20)
        wait_for(lambda: open_in(data) == 0, timeout=20)  # all idle: all closed
        # Half a line in each, closed holding it, then the rest of it.
        for i, f in enumerate(files):
            with open(f, "ab") as fh:
                fh.write(line(100 + i)[:4])
        time.sleep(0.3)  # read, and closed again (idle) with the half line held
        assert pipeline.numbers() == expected
        for i, f in enumerate(files):
            with open(f, "ab") as fh:
                fh.write(line(100 + i)[4:])
        expected += range(100, 112)
        wait_for(lambda: pipeline.numbers() == sorted(expected), timeout=20)
        wait_for(lambda: open_in(data) == 0, timeout=20)
        # While closed: late lines and a rotation out of the patterns (f00), a rename
        # to a name they match (f01), copytruncate (f02), deletions (f03, f04).
        with open(files[0], "ab") as fh:
            fh.write(line(200))
        os.rename(files[0], data / "f00.log.1")
        files[0].write_bytes(line(201))
        with open(files[1], "ab") as fh:
            fh.write(line(202))
        os.rename(files[1], data / "f01-old.log")
        files[2].write_bytes(line(203))  # shorter than what was read: from the start
        files[3].unlink()
        with open(files[4], "ab") as fh:  # a last line without its newline, then deleted
            fh.write(line(205)[:-1])
        time.sleep(0.3)  # read (the framer holds it) and closed again
        files[4].unlink()
        expected += [200, 201, 202, 203, 205]
        wait_for(lambda: pipeline.numbers() == sorted(expected), timeout=20)
        with open(data / "f01-old.log", "ab") as fh:  # still followed under its new name
            fh.write(line(204))
        for i in range(5, 12):  # and the others go on
            with open(files[i], "ab") as fh:
                fh.write(line(300 + i))
        expected += [204, *range(305, 312)]
        wait_for(lambda: pipeline.numbers() == sorted(expected), timeout=20)
        time.sleep(0.2)
        assert pipeline.numbers() == sorted(expected)  # nothing twice, late or not
        # Followed: f00 (the new one), f01-old, f02, f05-f11; all idle, all closed.
        wait_for(lambda: (counted("open"), counted("closed")) == (0, 10), timeout=20)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert 0 < most[0] <= 3


def test_an_open_file_renamed_to_a_matched_name_is_not_read_again(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(line(0) + line(1))
    source = pipeline.follow([str(tmp_path / "app.log*")])
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: pipeline.numbers() == [0, 1], timeout=20)
        os.rename(log, tmp_path / "app.log.1")  # logrotate's rename, then create
        log.write_bytes(line(2))
        with open(tmp_path / "app.log.1", "ab") as fh:
            fh.write(line(3))  # written late to the old file: read, once
        wait_for(lambda: pipeline.numbers() == [0, 1, 2, 3], timeout=20)
        time.sleep(0.2)
        assert pipeline.numbers() == [0, 1, 2, 3]
    finally:
        stop.set()
        thread.join(10)


FILES = 2000
NOFILE = 256  # the daemon's own descriptors fit (sockets, pipes, spool); 2,000 files do not


def _few_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.mark.timeout(240)
def test_a_daemon_follows_more_files_than_it_may_open(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    files = [data / f"f{i:04d}.log" for i in range(FILES)]
    for i, f in enumerate(files):
        f.write_bytes(line(i))
    conf = tmp_path / "c.toml"
    pipeline = {
        "source": "file",
        "paths": [f"{data}/*.log"],
        "follow": True,
        "poll_interval": "50ms",
        "close_idle_after": "1s",
    }  # max_open_files left at 256: as many as the daemon may open, with its own
    cfg = daemon_config(tmp_path / "state", f"{endpoint.url}/{database}", pipeline)
    cfg["supervisor"]["workers"] = 1
    conf.write_text(to_toml(cfg))
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chworkers", "run", "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_few_descriptors,
        )

    def count() -> int:
        if not ch_client.command("EXISTS TABLE ev"):  # the daemon creates it at start
            return 0
        return int(ch_client.query("SELECT count() FROM ev").result_rows[0][0])

    try:
        wait_for(lambda: count() == FILES, timeout=120, interval=0.5)
        for i, f in enumerate(files):  # every file grows again, past the limit
            with open(f, "ab") as fh:
                fh.write(line(FILES + i))
        wait_for(lambda: count() == 2 * FILES, timeout=120, interval=0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Too many open files" not in text, text[-3000:]
    assert f"lowered to p: {NOFILE - RESERVED_DESCRIPTORS}" in text, text[-3000:]
    n = 2 * FILES
    assert ch_client.query("SELECT count(), uniqExact(n), sum(n) FROM ev").result_rows == [
        (n, n, n * (n - 1) // 2)
    ]


def test_max_open_files_are_fitted_within_ulimit(caplog: pytest.LogCaptureFixture) -> None:
    """Four tailed pipelines at the default 256 under systemd's default 1,024: more than
    the daemon may open with its own descriptors; each gets its share, and it is said."""
    wanted = {f"p{i}": 256 for i in range(4)}
    fitted = fit_open_files(wanted, soft_limit=1024)
    assert fitted == dict.fromkeys(wanted, (1024 - RESERVED_DESCRIPTORS) // 4)
    assert "raise LimitNOFILE" in caplog.text
    assert fit_open_files({"p": 256, "q": 32}, soft_limit=65536) == {"p": 256, "q": 32}
    assert fit_open_files({"p": 256}, soft_limit=10) == {"p": 1}
