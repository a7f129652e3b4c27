"""The file source's positions file does not grow with every file it ever read.

A daemon tailing a directory of rotated logs kept one saved position per path for good:
after months, thousands of entries, all rewritten (and fsync'd) with every batch. A file
gone for ``forget_after`` seconds is forgotten now. And a file rotated to a name the
patterns also match, while the daemon was stopped, was read again from its start at the
next start (its position was saved under its old name): it is found by its inode and
first bytes now.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import waiting
from daemonthread import Running, count, daemon_config, lines

from chworkers.daemon.checkpoints import Checkpoints
from chworkers.embedded import EmbeddedClickHouse


def positions(state: Path) -> dict[str, dict[str, int]]:
    return Checkpoints(state / "positions").load("p")  # the snapshot and its journal


def config(state: Path, url: str, data: Path) -> dict[str, object]:
    pipeline = {
        "source": "file",
        "paths": [str(data / "*")],
        "follow": True,
        "poll_interval": "50ms",
        "forget_after": "300ms",
    }
    return daemon_config(state, url, pipeline)


@pytest.mark.timeout(180)
def test_files_gone_are_forgotten_and_none_is_read_twice(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    state, data = tmp_path / "state", tmp_path / "in"
    data.mkdir()
    url = f"{endpoint.url}/{database}"
    running = Running(config(state, url, data))
    try:
        # Twelve rotations: each file is read, then deleted (as logrotate's rotate N does).
        for i in range(12):
            (data / f"app-{i:02}.log").write_bytes(lines(i * 100, i * 100 + 100))
            waiting.wait_for(lambda i=i: count(endpoint, database)[0] == (i + 1) * 100, timeout=60)
            if i >= 2:
                (data / f"app-{i - 2:02}.log").unlink()
        # The positions of the files deleted are forgotten; those of the files there stay.
        waiting.wait_for(lambda: len(positions(state)) == 2, timeout=30)
        assert sorted(positions(state)) == [str(data / "app-10.log"), str(data / "app-11.log")]
        # Rotation to a name the patterns match: app.log -> app.log.1, and a new app.log.
        (data / "app.log").write_bytes(lines(5000, 5100))
        waiting.wait_for(lambda: count(endpoint, database)[0] == 1300, timeout=60)
    finally:
        assert running.stop() == 0
    os.rename(data / "app.log", data / "app.log.1")  # while the daemon is stopped
    (data / "app.log").write_bytes(lines(6000, 6050))

    running = Running(config(state, url, data))
    try:
        waiting.wait_for(lambda: count(endpoint, database)[0] >= 1350, timeout=60)
        (data / "app.log.1").unlink()
        for name in ("app-10.log", "app-11.log"):
            (data / name).unlink()
        waiting.wait_for(lambda: sorted(positions(state)) == [str(data / "app.log")], timeout=30)
    finally:
        assert running.stop() == 0
    # Nothing was read twice: not app.log.1 (read as app.log before), nor the others.
    assert count(endpoint, database) == (1350, 1350)


@pytest.mark.timeout(180)
def test_a_file_no_longer_in_paths_is_forgotten_though_it_is_still_there(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    """Its ``paths`` changed, a source kept the positions of the files it no longer
    reads until those files were deleted (maybe never): rewritten with every save."""
    state, data = tmp_path / "state", tmp_path / "in"
    data.mkdir()
    url = f"{endpoint.url}/{database}"
    (data / "old.log").write_bytes(lines(0, 100))
    (data / "new.log").write_bytes(lines(100, 150))

    def only(name: str) -> dict[str, object]:
        cfg = config(state, url, data)
        cfg["pipelines"][0]["paths"] = [str(data / name)]  # type: ignore[index]
        return cfg

    running = Running(only("old*"))
    try:
        waiting.wait_for(lambda: count(endpoint, database)[0] == 100, timeout=60)
        assert sorted(positions(state)) == [str(data / "old.log")]
    finally:
        assert running.stop() == 0
    running = Running(only("new*"))  # the paths changed; old.log stays where it is
    try:
        waiting.wait_for(lambda: count(endpoint, database)[0] == 150, timeout=60)
        waiting.wait_for(lambda: sorted(positions(state)) == [str(data / "new.log")], timeout=30)
    finally:
        assert running.stop() == 0
    assert (data / "old.log").exists() and count(endpoint, database) == (150, 150)
