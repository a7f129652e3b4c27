"""A forkserver worker that exits with code 255 itself is reaped at once, not after 1 s.

multiprocess reports 255 both for a worker that exited with it and for one whose fork
server died (the status pipe broke), so the supervisor's loop waited up to
``SERVER_DEATH_WAIT`` (1 s) for the server to be seen dead on every real 255, its loop
stalled meanwhile (no results read, no task handed out). The fork server writes a
worker's status down that pipe and then closes it; a pipe closed with nothing in it is
the server gone. The supervisor now looks at the pipe before reading the status, and
waits for the server only when it is gone.

The wait is not timed here: the loop's calls asking how the server ended are recorded
(the real function, wrapped), and a real 255 makes none that waits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from chworkers.workers import forkserver

pytestmark = pytest.mark.timeout(60)


def exit_255_once(marker: str) -> int:
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(255)
    return os.getpid()


def test_a_worker_exiting_255_itself_is_a_crash_told_without_waiting(
    make_sup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[float] = []
    real = forkserver.ended

    def ended(pid: int, wait: float = 0.0) -> str | None:
        asked.append(wait)
        return real(pid, wait)

    monkeypatch.setattr(forkserver, "ended", ended)
    sup = make_sup(workers=1, start_method="forkserver", restart_backoff=0.01)
    marker = tmp_path / "exited"
    pid = sup.call(exit_255_once, str(marker)).result(30)
    assert pid != int(marker.read_text())
    assert sup.stats().restarts == {"crashed": 1}  # not "forkserver": the server lives
    assert not [wait for wait in asked if wait > 0], asked
