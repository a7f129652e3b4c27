"""The ``chworkers`` command line run as a user runs it: ``python -m chworkers ARGS`` in
a subprocess of this interpreter (so it imports this checkout), its output captured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from waiting import wait_for


def run_chworkers(
    *args: str,
    timeout: float = 180,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """What ``chworkers ARGS`` printed and exited with (stdout, stderr as text); ``env``
    is added to this process's environment, ``input`` is its standard input."""
    return subprocess.run(
        [sys.executable, "-m", "chworkers", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        input=input,
    )


def run_until_signalled(
    *args: str,
    ready: Callable[[subprocess.Popen[str]], bool],
    signum: int = signal.SIGTERM,
    group: bool = False,
    ready_timeout: float = 120,
    timeout: float = 60,
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``chworkers ARGS`` started (``group``: in a process group of its own, which the
    signal goes to as a whole, as from ``timeout`` or ``kill -TERM -PGID``), sent
    ``signum`` once ``ready(process)`` holds; what it printed and exited with, and how
    long it took to exit after the signal. Fails when it exits before it is ready, and
    kills it (its group) when it outlives ``timeout``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chworkers", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=group,
    )
    try:
        wait_for(
            lambda: ready(proc) or proc.poll() is not None,
            timeout=ready_timeout,
            what="chworkers to be ready for the signal",
        )
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        signalled = time.monotonic()
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=timeout)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), took
