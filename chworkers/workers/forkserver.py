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

The server starts with the signals a supervisor handles (:data:`~chworkers.workers.
signals.HANDLED`: SIGTERM, SIGINT, SIGHUP, SIGUSR2) blocked, and so does every worker it
forks until the worker has set its own dispositions: a signal sent to the whole process
group (``timeout``, ``kill -TERM -PGID``, ``tini -g``, Ctrl-C) must not kill the server,
whose death makes every worker it forked look dead to the supervisor (exit code 255).
The server needs no signal to go: it exits when this process does, whatever killed it.

The server listens on a Unix socket in multiprocess's temporary directory, made in
``$TMPDIR``; when that path would be too long for a Unix socket (107 bytes), the
directory is made in a short one instead (:func:`chworkers.sockdir.short_parent`), so a
long ``$TMPDIR`` never stops a worker from starting.
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

import multiprocess
from multiprocess import forkserver, resource_tracker, util

from chworkers.errors import ConfigError
from chworkers.sockdir import MAX_SOCKET_PATH, short_parent
from chworkers.workers.signals import HANDLED, blocked

__all__ = ["PRELOAD", "ensure_running", "start_early"]

#: Modules the fork server imports once, before it forks any worker, so that no worker
#: imports them itself.
PRELOAD = ("chworkers.workers.worker",)

#: What the server's socket path adds to a parent directory:
#: multiprocess's "/pymp-XXXXXXXX" and its "/listener-XXXXXXXX".
SOCKET_ROOM = len("/pymp-XXXXXXXX/listener-XXXXXXXX")

_temp_dir_lock = threading.Lock()


def start_early(start_method: str) -> bool:
    """Start the fork server now when workers will start from it (``start_method``
    ``forkserver``); returns whether it did. Does not wait for its imports."""
    if start_method != "forkserver":
        return False
    preload(multiprocess.get_context("forkserver"))
    ensure_running()
    return True


def ensure_running() -> None:
    """Start the fork server unless it runs, with the supervisor's signals blocked in it
    (from any thread: see :func:`~chworkers.workers.signals.blocked`)."""
    # The server's start starts the resource tracker first, which UNBLOCKS SIGINT and
    # SIGTERM in this thread once it started (it ignores them itself): start it before.
    resource_tracker.ensure_running()
    short_temp_dir()
    with blocked(HANDLED):
        forkserver.ensure_running()


def short_temp_dir() -> str:
    """multiprocess's temporary directory of this process (where the server's socket
    goes), made in a directory short enough for that socket when ``$TMPDIR`` is not;
    raises :class:`ConfigError` when no directory is."""
    with _temp_dir_lock:
        parent = short_parent(SOCKET_ROOM, "fork server")
        if parent == tempfile.gettempdir():
            made: str = util.get_temp_dir()
        else:
            # multiprocess makes its directory (once per process) under tempfile's
            # temporary directory: point that at the short one meanwhile.
            saved = tempfile.tempdir
            tempfile.tempdir = parent
            try:
                made = util.get_temp_dir()
            finally:
                tempfile.tempdir = saved
    if len(os.fsencode(made)) + len("/listener-XXXXXXXX") > MAX_SOCKET_PATH:
        raise ConfigError(
            f"fork server: multiprocess's temporary directory {made} (made before the "
            f"fork server started) is too long a path for a Unix socket "
            f"({MAX_SOCKET_PATH} bytes at most); set TMPDIR to a shorter directory",
            key="TMPDIR",
            value=tempfile.gettempdir(),
            source="environment",
        )
    return made


def preload(ctx: Any) -> None:
    """Tell a ``forkserver`` context's server what to import before its first fork."""
    ctx.set_forkserver_preload(list(PRELOAD))
