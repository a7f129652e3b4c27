"""``chworkers run`` without shards does not import numpy (nor pandas, pyarrow) to start (once
ready it does, on a thread of its own, to count records: chworkers/vectorscan.py).

Sharding (issue 14) brought ``chworkers.clickhouse.sharding`` into the daemon's
configuration, its supervisor and its service, and with it numpy: about 0.15 s of CPU
at every start of every daemon, sharded or not, against a start-up budget of 0.5 s
(issue 11). Those modules are now imported where a sharded pipeline or insert is built.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("numpy", "pandas", "pyarrow")


def test_the_daemons_process_imports_no_numpy() -> None:
    # What `chworkers run` imports before it is ready: the command line, then the daemon.
    code = (
        "import json, sys\n"
        "import chworkers.cli.main, chworkers.daemon.service\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout) == []
