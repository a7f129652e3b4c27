"""Two test processes that both miss a Debian package install it one at a time.

apt-get fails at once when another apt-get holds dpkg's lock, so with the suite spread
over pytest-xdist workers (tests/test_prometheus.py and tests/test_systemd_daemon.py
both want prometheus) the second installer used to fail and its tests skipped or
errored. tests/debpackages.py installs under a file lock and checks again after
waiting. PATH holds only a temporary directory here, so apt-get itself never runs.
"""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

import pytest
from debpackages import install


def test_a_second_installer_waits_for_the_first_and_finds_the_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, lock = tmp_path / "bin", tmp_path / "apt.lock"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    outcome: list[str | None] = []
    with open(lock, "a") as first:
        fcntl.flock(first, fcntl.LOCK_EX)  # the first installer is at work
        second = threading.Thread(
            target=lambda: outcome.append(install("some-package", "someprog", lock=lock))
        )
        second.start()
        second.join(0.5)
        assert second.is_alive(), f"did not wait for the first installer: {outcome}"
        program = bin_dir / "someprog"  # what the first installer's apt-get put there
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    second.join(30)
    assert outcome == [None]


def test_without_apt_get_the_failure_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    failure = install("some-package", "someprog", lock=tmp_path / "apt.lock")
    assert failure == "apt-get is not available"
