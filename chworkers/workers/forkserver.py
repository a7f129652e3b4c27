"""The fork server workers start from (start method ``forkserver``), started early.

multiprocess starts its fork server when the first worker starts, and the server imports
what a worker needs (:data:`PRELOAD`: the worker's module, clickhouse-connect, the pool)
before it forks that worker: about a third of a second of CPU on a small machine, while
the supervisor waits for it. A program that has more to do before its supervisor starts
calls :func:`start_early` first: the server's imports then run on another core while the
program goes on (``chworkers run`` imports the daemon, opens its spool, replays it and
opens its sources meanwhile).

The server is the one multiprocess keeps per process (the supervisor's ``forkserver``
context uses the same), so starting it early changes only when it starts. It inherits
the environment and the working directory of that moment, as it would later; it exits
by itself when this process does.
"""

from __future__ import annotations

from typing import Any

import multiprocess
from multiprocess import forkserver

__all__ = ["PRELOAD", "start_early"]

#: Modules the fork server imports once, before it forks any worker, so that no worker
#: imports them itself.
PRELOAD = ("chworkers.workers.worker",)


def start_early(start_method: str) -> bool:
    """Start the fork server now when workers will start from it (``start_method``
    ``forkserver``); returns whether it did. Does not wait for its imports."""
    if start_method != "forkserver":
        return False
    preload(multiprocess.get_context("forkserver"))
    forkserver.ensure_running()
    return True


def preload(ctx: Any) -> None:
    """Tell a ``forkserver`` context's server what to import before its first fork."""
    ctx.set_forkserver_preload(list(PRELOAD))
