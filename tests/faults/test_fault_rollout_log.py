"""A rolling restart asked again while one runs names what it still replaces.

Before, in a user trial of issue 16 (SIGUSR2 twice, 2.4 s apart, to `chworkers run`
with 2 workers), the second line read "rolling restart: replacing 2 worker(s) one at a
time (worker-2)": the count held the worker being replaced at that moment (worker-1),
the list did not, and nothing said that this request joined the one running.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import waiting

pytestmark = pytest.mark.timeout(90)

LINE = re.compile(r"(\d+) worker\(s\)[^(]*\(([^)]*)\)")


def busy(directory: str) -> int:
    """Say which worker runs it, then wait until told to go on (an old worker being
    replaced stays until its task is done: it is still there when asked again)."""
    Path(directory, "busy", str(os.getpid())).write_text("")
    while not os.path.exists(os.path.join(directory, "go")):
        time.sleep(0.01)
    return os.getpid()


def test_a_second_request_names_the_worker_being_replaced(
    make_sup: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    (tmp_path / "busy").mkdir()
    sup = make_sup(workers=2)
    waiting.wait_for(lambda: len(sup.stats().workers) == 2, timeout=30, what="2 workers")
    before = {w["name"] for w in sup.stats().workers}
    # Both old workers busy until the second request is in: the one being replaced
    # cannot leave before it (idle, it left within milliseconds of the fresh worker's
    # start, and the second request sometimes came after it had gone).
    for _ in range(2):
        sup.call(busy, str(tmp_path))
    waiting.wait_for(
        lambda: len(list((tmp_path / "busy").iterdir())) == 2, timeout=30, what="busy workers"
    )

    def go_on_once_asked_again() -> None:
        waiting.wait_for(
            lambda: any("asked again" in r.getMessage() for r in list(caplog.records)),
            timeout=30,
            what="the second request",
        )
        (tmp_path / "go").touch()

    with caplog.at_level(logging.INFO, logger="chworkers.workers.rollout"):
        sup.restart_workers(wait=False)
        # Until the first step's fresh worker runs beside the old ones: one is being
        # replaced now.
        waiting.wait_for(lambda: len(sup.stats().workers) == 3, timeout=30, what="the fresh worker")
        threading.Thread(target=go_on_once_asked_again, daemon=True).start()
        assert sup.restart_workers(timeout=60) == 2
    lines = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("rolling restart:")
    ]
    asked = [line for line in lines if "worker(s)" in line]
    assert len(asked) == 2, lines
    assert "asked again while one runs" in asked[1], asked
    for line in asked:
        match = LINE.search(line)
        assert match is not None, line
        names = [n for n in match.group(2).split(", ") if n != "-"]
        assert int(match.group(1)) == len(names), line
        assert set(names) <= before, line
    # The worker being replaced when it was asked again is among those it names.
    assert len(LINE.search(asked[1]).group(2).split(", ")) == 2, asked[1]  # type: ignore[union-attr]
