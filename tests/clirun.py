"""The ``chworkers`` command line run as a user runs it: ``python -m chworkers ARGS`` in
a subprocess of this interpreter (so it imports this checkout), its output captured."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


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
