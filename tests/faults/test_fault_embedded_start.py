"""``EmbeddedClickHouse.start`` never leaves its child behind (issue 9, defect 15).

A start that failed half-way (an interrupt while waiting for the ready line, a child
that printed something else first) used to forget the child without stopping it: it
kept the data directory locked and the port taken, so the next start failed on them.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import waiting
from drillprocs import process_table

from chworkers.embedded import EmbeddedClickHouse


class Interrupted(BaseException):
    """What a signal handler raises (like KeyboardInterrupt): not an Exception."""


def children_serving(path: Path) -> list[int]:
    """Endpoint processes serving the data directory ``path``."""
    needle = f"--path {path} "
    return [
        p.pid for p in process_table().values() if " embedded " in p.cmdline and needle in p.cmdline
    ]


@pytest.mark.timeout(120)
def test_an_interrupted_start_takes_its_child_down(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ch = EmbeddedClickHouse(data)

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # the child is importing, not ready yet
        with pytest.raises(Interrupted):
            ch.start()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not ch.running
    waiting.wait_for(lambda: not children_serving(data), timeout=10)
    with ch:  # the data directory and the port are free again
        assert ch.stats()["max_requests_in_flight"] >= 0
    assert children_serving(data) == []


@pytest.mark.timeout(120)
def test_output_before_the_ready_line_does_not_fail_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library that prints a banner to stdout at import must not fail the start (and
    the failed start used to leave the serving child behind)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("print('a banner from some library', flush=True)\n")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    )
    data = tmp_path / "data"
    with EmbeddedClickHouse(data) as ch:
        assert ch.running and children_serving(data) == [ch.pid]
    waiting.wait_for(lambda: not children_serving(data), timeout=10)
