"""An idle poll of a followed source costs nothing per file; what changes is seen at once.

Every ``poll_interval`` a followed source matched its patterns again (a directory
listing per pattern) and looked at every file it follows (a ``stat`` each): ~25 ms of
CPU per poll at 2,000 files, ~140 ms at 10,000, 0.55 CPU s/s at the default 250 ms for
a daemon whose files were all idle. Now the directories are watched with inotify
(:mod:`chworkers.daemon.tailingwatch`) and an idle poll lists no directory; a file
written to, created, renamed or a symbolic link's target written to is still seen at
the next poll, not at the next full one (every 10 s).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fault_follow_open_files import Pipeline, line
from waiting import wait_for

from chworkers.daemon.filesource import FileSource

_listing: dict[int, int] = {}


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event in ("os.scandir", "os.listdir"):
        ident = threading.get_ident()
        if ident in _listing:
            _listing[ident] += 1


sys.addaudithook(_audit)  # (for the process's life: it counts only the threads named)


class Running:
    """A followed source run in its own thread, its directory listings counted."""

    def __init__(self, source: FileSource) -> None:
        self.source = source
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        _listing[threading.get_ident()] = 0
        self.source.run(self.stop)

    def listings(self) -> int:
        assert self.thread.ident is not None
        return _listing[self.thread.ident]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Pipeline, list[Running]]]:
    pipeline = Pipeline(tmp_path)
    started: list[Running] = []
    yield pipeline, started
    for run in started:
        run.stop.set()
        run.thread.join(10)
    pipeline.batcher.close(timeout=10)


def _start(pipeline: Pipeline, started: list[Running], paths: list[str], **kw: object) -> Running:
    run = Running(pipeline.follow(paths, **kw))
    started.append(run)
    run.thread.start()
    return run


def test_an_idle_poll_lists_no_directory(
    running: tuple[Pipeline, list[Running]], tmp_path: Path
) -> None:
    pipeline, started = running
    data = tmp_path / "logs"
    data.mkdir()
    files = [data / f"f{i:03d}.log" for i in range(300)]
    for i, f in enumerate(files):
        f.write_bytes(line(i))
    run = _start(pipeline, started, [f"{data}/*.log"], max_open_files=16, close_idle_after=0.2)
    wait_for(lambda: pipeline.numbers() == list(range(300)), timeout=60)
    wait_for(lambda: not run.source._open, timeout=10)  # every file closed, idle
    time.sleep(0.3)
    before, polls = run.listings(), 1.0 / 0.01
    time.sleep(1.0)  # ~100 polls; a full one (every 10 s) may fall in it
    assert run.listings() - before <= 1, f"{run.listings() - before} listings in ~{polls:.0f} polls"

    # Still seen at the next poll: a closed file written to, and a new file.
    with open(files[7], "ab") as fh:
        fh.write(line(300))
    (data / "new.log").write_bytes(line(301))
    wait_for(lambda: pipeline.numbers() == list(range(302)), timeout=5)


def test_a_followed_link_is_read_when_its_target_is_written(
    running: tuple[Pipeline, list[Running]], tmp_path: Path
) -> None:
    """Kubernetes' /var/log/containers/*.log: links to files in other directories, whose
    writes inotify reports in the target's directory, not the link's."""
    pipeline, started = running
    links, pods = tmp_path / "containers", tmp_path / "pods"
    links.mkdir()
    pods.mkdir()
    target = pods / "0.log"
    target.write_bytes(line(0))
    os.symlink(target, links / "app.log")
    _start(pipeline, started, [f"{links}/*.log"])
    wait_for(lambda: pipeline.numbers() == [0], timeout=10)
    time.sleep(0.2)  # the full polls after the start are done
    with open(target, "ab") as fh:
        fh.write(line(1))
    wait_for(lambda: pipeline.numbers() == [0, 1], timeout=5)
    # Rotated by rename at the target: the new file is read, the old one finished.
    os.rename(target, pods / "0.log.1")
    target.write_bytes(line(2))
    wait_for(lambda: pipeline.numbers() == [0, 1, 2], timeout=5)


def test_files_written_while_others_wait_for_a_descriptor_are_all_read_at_once(
    running: tuple[Pipeline, list[Running]], tmp_path: Path
) -> None:
    """Every file written to at once, more than may be open: the open ones closed to make
    room for the closed ones before they were read were left closed with their new line
    until the next full poll (10 s), no event left to tell they grew."""
    pipeline, started = running
    data = tmp_path / "logs"
    data.mkdir()
    files = [data / f"f{i}.log" for i in range(8)]
    for i, f in enumerate(files):
        f.write_bytes(line(i))
    run = _start(pipeline, started, [f"{data}/*.log"], max_open_files=4)
    wait_for(lambda: pipeline.numbers() == list(range(8)), timeout=10)
    wait_for(lambda: len(run.source._parked) == 4, timeout=10)
    time.sleep(0.3)  # the full polls after the start are done
    for i, f in enumerate(files, start=8):
        with open(f, "ab") as fh:
            fh.write(line(i))
    wait_for(lambda: pipeline.numbers() == list(range(16)), timeout=5)
