"""The daemon raises its soft ``ulimit -n`` to its hard one before fitting its files.

``max_open_files`` were fitted within the soft ``RLIMIT_NOFILE`` as the daemon found it:
under systemd's default (a soft 1,024 below a hard 524,288) four tailed pipelines at the
default 256 were lowered to 240 each and their files took turns for descriptors, though
the daemon could have raised its own soft limit (as many daemons do at start) and opened
them all. Here a process starts with a soft limit of 256 under a hard one of 4,096.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

PROGRAM = """
import json, logging, resource
logging.basicConfig(level=logging.INFO)
from chworkers.daemon.closedfiles import fit_open_files
fitted = fit_open_files({"p": 1000, "q": 1000})
print(json.dumps([fitted, resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))
"""


def _soft_256() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))


def test_the_soft_limit_is_raised_to_the_hard_one_before_files_are_fitted() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_soft_256,
        check=True,
    )
    fitted, soft = json.loads(done.stdout)
    assert soft == 4096
    assert fitted == {"p": 1000, "q": 1000}, done.stderr
    assert "raised from 256 to 4096, the hard limit" in done.stderr


def _hard_256() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_files_are_still_fitted_within_the_hard_limit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_hard_256,
        check=True,
    )
    fitted, soft = json.loads(done.stdout)
    assert soft == 256
    assert fitted == {"p": 96, "q": 96}
    assert "raise LimitNOFILE or the hard ulimit -n" in done.stderr
