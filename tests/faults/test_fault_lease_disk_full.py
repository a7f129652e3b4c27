"""A lease file that cannot have its pages refuses to start the broker, not kill a worker.

The lease file is mapped by every process and written through the mapping. Created
sparse, each page was allocated on its first write: on a full filesystem (the spool's
filesystem, say, when the temporary directory lives on it) that write is a SIGBUS, which
kills whichever process touches a new page first, a worker taking its first lease or the
supervisor itself. The broker now allocates every page when it creates the file, so a
full filesystem is a clear PoolError at start, and nothing dies later.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from smalldisk import disk_full, small_filesystem

PROGRAM = """
from chworkers.clickhouse.lease import LeaseBroker
broker = LeaseBroker(2)
broker.start()
broker.client("worker-1").acquire(5)
print("acquired")
broker.close()
"""


def test_a_full_filesystem_is_a_clear_error_at_start() -> None:
    # A short path: under a long one (pytest-xdist's) the broker would rightly put its
    # socket and lease file in /tmp, away from the full filesystem.
    fs = Path(tempfile.mkdtemp(prefix="lease-fs-", dir="/tmp"))
    try:
        _run_on_a_full_filesystem(fs)
    finally:
        shutil.rmtree(fs, ignore_errors=True)


def _run_on_a_full_filesystem(fs: Path) -> None:
    with small_filesystem(fs) as tmpfs:
        if not tmpfs:
            pytest.skip("needs a tmpfs to fill (a file size limit would fail the same either way)")
        with disk_full(fs, tmpfs=True, room=4096):  # one page: the header, not a row
            result = subprocess.run(
                [sys.executable, "-c", PROGRAM],
                env={**os.environ, "TMPDIR": str(fs)},
                capture_output=True,
                text=True,
                timeout=60,
            )
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "PoolError: cannot create the lease file" in result.stderr
    assert "No space left on device" in result.stderr
