"""A positions journal is applied only over the snapshot it follows.

The journal of file positions holds the changes since its snapshot. Read beside another
snapshot, its records set positions back: a crash left a journal, an earlier version
(which knows only the snapshot) ran and wrote the snapshot anew, and at the next start
of this version the old journal was applied over it, so every file it named was read
again from where it had been before that run, its lines spooled twice (with new
tokens: inserted twice). The journal's first line now names its snapshot (checksum and
size); a journal found beside another is not applied.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from chworkers.daemon.checkpoints import Checkpoints


def position(offset: int, ino: int = 7) -> dict[str, int]:
    return {"dev": 64768, "ino": ino, "offset": offset, "head": 77, "head_len": 256}


def test_an_earlier_version_s_snapshot_is_not_set_back_by_an_old_journal(
    tmp_path: Path,
) -> None:
    first = Checkpoints(tmp_path)
    first.commit("p", {"/logs/a": position(100), "/logs/b": position(10, ino=8)})
    first.commit("p", {"/logs/a": position(150)})  # a journal record; then kill -9
    assert (tmp_path / "p.journal").stat().st_size > 0
    # An earlier version runs: it reads the snapshot alone (a at 100, b at 10), reads on
    # to 300, b rotated (another inode), and writes the snapshot whole at its stop.
    later = {"/logs/a": position(300), "/logs/b": position(5, ino=9)}
    (tmp_path / "p.json").write_text(json.dumps(later, sort_keys=True))
    assert Checkpoints(tmp_path).load("p") == later


CRASH_IN_COMPACTION = textwrap.dedent(
    """
    import os, signal, sys
    from chworkers.daemon import positionsfile
    from chworkers.daemon.checkpoints import Checkpoints

    def pos(offset):
        return {"dev": 64768, "ino": 7, "offset": offset, "head": 77, "head_len": 256}

    checkpoints = Checkpoints(sys.argv[1])
    checkpoints.load("p")
    def killed(fd, length):  # the new snapshot in place, the journal not emptied yet
        os.kill(os.getpid(), signal.SIGKILL)
    positionsfile.os.ftruncate = killed
    checkpoints.commit("p", {"/logs/c": pos(1)})  # the first save of a process compacts
    """
)


def test_a_crash_between_the_snapshot_and_emptying_the_journal(tmp_path: Path) -> None:
    first = Checkpoints(tmp_path)
    first.commit("p", {"/logs/a": position(100)})
    first.commit("p", {"/logs/a": position(150)})
    first.commit("p", {"/logs/a": position(200)})  # confirmed: the journal holds it
    proc = subprocess.run([sys.executable, "-c", CRASH_IN_COMPACTION, str(tmp_path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    saved = Checkpoints(tmp_path).load("p")
    assert saved["/logs/a"]["offset"] == 200
    assert saved.get("/logs/c") in (None, position(1))  # in flight: either
    assert os.path.exists(tmp_path / "p.journal")
