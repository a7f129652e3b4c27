"""A worker that dies while starting, before it can say why, is not reported as a bare
exit code.

Before, in a user trial of issue 16 (a rolling restart after a deploy that broke the
main module: under `spawn` each fresh worker imports it again and fails), the rollout
was abandoned as the docs say, but the error and the log said only "last: exit code 1"
(docs/supervisor.md promises "the last worker's error"): nothing said that the worker
died importing, nor where its traceback went.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

APP = r"""
import os, sys
if os.environ.get("BREAK_WORKERS") and __name__ != "__main__":
    raise ImportError("deploy broke this module")
from chworkers import Supervisor
from chworkers.errors import WorkerBootError

def main():
    os.environ["BREAK_WORKERS"] = "1"  # workers start after this: each fails to import
    sup = Supervisor(workers=1, start_method="spawn", max_boot_failures=2,
                     restart_backoff="50ms", metrics_port=None)
    try:
        sup.start()
    except WorkerBootError as exc:
        print("ERROR:", exc, flush=True)
        return
    finally:
        sup.stop(graceful=False)
    print("started", flush=True)

if __name__ == "__main__":
    main()
"""


def test_a_worker_dead_at_import_says_where_to_look(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    result = subprocess.run(
        [sys.executable, str(app)], capture_output=True, text=True, timeout=80, cwd=tmp_path
    )
    assert "ERROR:" in result.stdout, (result.stdout, result.stderr)
    said = result.stdout
    assert "2 worker processes in a row died while starting" in said, said
    assert "exit code 1 before it could say why" in said, said
    assert "its traceback is on stderr" in said, said
    assert "ImportError: deploy broke this module" in result.stderr  # where it says it is
