"""The functions the daemon submits to its workers import nothing of the daemon there.

A worker unpickles a submitted function by importing its module. ``parts_state`` (the
daemon's parts check, every few seconds per table) lived in ``partspressure`` and
``create_table`` in ``shardtarget``, so a worker's first check imported the batcher,
the spool, the dispatcher and the HTTP server: 0.1-0.2 s of CPU in the middle of a run,
during which that worker inserted nothing (seen in a profile of ``chworkers bench
--only daemon``). They live in ``workertasks`` now, which imports nothing of the daemon.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

from chworkers.daemon.batchflow import parts_state
from chworkers.daemon.daemonstart import create_table

HEAVY = ("batcher", "spool", "dispatch", "batchfile", "tables", "service")


def test_a_worker_unpickling_the_daemons_tasks_imports_none_of_the_daemon() -> None:
    payload = pickle.dumps((parts_state, create_table))
    code = (
        "import pickle, sys\n"
        "import chworkers.workers.worker\n"
        f"pickle.loads({payload!r})\n"
        "print(' '.join(m for m in sys.modules if m.startswith('chworkers.daemon.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(out.stdout.split())
    assert loaded == {"chworkers.daemon.workertasks"}, loaded
    assert not {f"chworkers.daemon.{m}" for m in HEAVY} & loaded
