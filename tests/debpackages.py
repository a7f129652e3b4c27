"""Debian packages the tests need (prometheus, redis-server), installed on first use.

apt-get takes dpkg's lock and fails at once when another apt-get holds it, so two
pytest-xdist workers (or two test runs on one machine) that both find a program missing
must not install side by side: the first installs under a file lock, the others wait
for it and then find the program there.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
from pathlib import Path

import chworkers.freeport

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
LOCK = Path(tempfile.gettempdir()) / "chworkers-tests-apt.lock"


def installed(*programs: str) -> bool:
    return all(shutil.which(p) is not None for p in programs)


def install(package: str, *programs: str, lock: Path = LOCK) -> str | None:
    """Make sure ``programs`` are on PATH, apt-getting ``package`` if one is missing.

    Returns why that failed, or None. One installer at a time (``lock``); whoever waited
    checks again before running apt-get itself.
    """
    if installed(*programs):
        return None
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file is closed
        if installed(*programs):
            return None  # someone else installed it while we waited
        if shutil.which("apt-get") is None:
            return "apt-get is not available"
        steps = (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
        )
        for cmd in steps:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=APT_ENV)
            if result.returncode != 0:
                return f"{' '.join(cmd)} failed: {result.stderr.strip()[-500:]}"
    return None if installed(*programs) else f"{', '.join(programs)} still missing"


class ProgramUnavailable(RuntimeError):
    """A program the tests need is missing and could not be installed."""


def find_program(
    package: str, program: str, error: type[ProgramUnavailable] = ProgramUnavailable
) -> str:
    """The path of ``program``, apt-get installing Debian's ``package`` if it is missing
    (``error`` when that fails)."""
    failure = install(package, program)
    path = shutil.which(program)
    if path is None:
        raise error(f"{program} is missing and could not be installed: {failure}")
    return path


def free_port() -> int:
    """A loopback port free at this moment (for a server the tests start), outside the
    range the kernel gives outgoing connections (chworkers.freeport says why)."""
    return chworkers.freeport.free_port("127.0.0.1")
