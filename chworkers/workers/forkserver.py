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

A daemon runs for months; its fork server may die meanwhile (the OOM killer, a stray
``kill``). :func:`ensure_running`, called before each worker starts, then starts a new
one, logs it and returns a :class:`Restart` for the supervisor to count. The workers the
dead server forked lose the pipe their exit status came through (multiprocess reports
them gone with code 255 while they may still run): the supervisor tells them by
:func:`ended` and replaces them (:mod:`chworkers.workers.crew`).
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import multiprocess
from multiprocess import forkserver, resource_tracker, util

from chworkers.errors import ConfigError
from chworkers.sockdir import MAX_SOCKET_PATH, short_parent
from chworkers.workers.signals import HANDLED, blocked

__all__ = [
    "PRELOAD",
    "Restart",
    "ended",
    "ensure_running",
    "ensure_tracker",
    "server_pid",
    "start_early",
]

log = logging.getLogger(__name__)

#: Modules the fork server imports once, before it forks any worker, so that no worker
#: imports them itself: the worker's loop, and its ClickHouse pool with clickhouse-connect
#: (which the worker's module imports only when its pool is made, so that the
#: supervisor's process, the daemon's among them, need not import it at all).
PRELOAD = ("chworkers.workers.worker", "chworkers.clickhouse.pool")

#: What the server's socket path adds to a parent directory:
#: multiprocess's "/pymp-XXXXXXXX" and its "/listener-XXXXXXXX".
SOCKET_ROOM = len("/pymp-XXXXXXXX/listener-XXXXXXXX")

_temp_dir_lock = threading.Lock()
#: Held while a server is checked, reaped and replaced, and while :data:`_replaced` is
#: written or read (reentrant: :func:`ensure_running` asks :func:`ended` under it).
_server_lock = threading.RLock()
#: How the servers this process replaced ended, by pid (the last few): their workers
#: are reaped after the new server started, when the old one can no longer be waited for.
#: Written under :data:`_server_lock` before it is released after the reap, so a reader
#: that finds the server reaped (under the lock too) finds how it ended, never "reaped
#: elsewhere" for a server this process replaced.
_replaced: dict[int, str] = {}


@dataclass(frozen=True)
class Restart:
    """A fork server found gone and replaced: ``old_pid``, how it ``ended`` (``was killed by
    SIGKILL``, ``exited with code 1``), and the new one's ``new_pid``."""

    old_pid: int
    ended: str
    new_pid: int | None


def start_early(start_method: str) -> bool:
    """Start the fork server now when workers will start from it (``start_method``
    ``forkserver``); returns whether it did. Does not wait for its imports."""
    if start_method != "forkserver":
        return False
    preload(multiprocess.get_context("forkserver"))
    ensure_running()
    return True


def ensure_running() -> Restart | None:
    """Start the fork server unless it runs, with the supervisor's signals blocked in it
    (from any thread: see :func:`~chworkers.workers.signals.blocked`); returns the
    :class:`Restart` when it replaced one that had died (logged as a warning)."""
    # The server's start starts the resource tracker first, which UNBLOCKS SIGINT and
    # SIGTERM in this thread once it started (it ignores them itself): start it before.
    ensure_tracker()
    short_temp_dir()
    with _server_lock:
        old = server_pid()
        how = ended(old) if old is not None else None
        if how == REAPED:
            _forget()  # multiprocess's own check (waitpid) would raise ChildProcessError
        with blocked(HANDLED):
            forkserver.ensure_running()  # reaps a server that ended
        new = server_pid()
        if old is None or (how is None and new == old):
            return None
        restart = Restart(old, how or "ended", new)
        _replaced[old] = restart.ended
        while len(_replaced) > 16:
            del _replaced[next(iter(_replaced))]
    log.warning(
        "the workers' fork server (pid %d) %s; started a new one (pid %s)",
        restart.old_pid,
        restart.ended,
        restart.new_pid,
    )
    return restart


def ensure_tracker() -> None:
    """Start multiprocess's resource tracker unless it runs, with the supervisor's
    signals blocked in it. The tracker ignores SIGINT and SIGTERM itself, but not SIGHUP
    and SIGUSR2: sent to the whole process group (``systemctl kill --signal=SIGUSR2``
    without ``--kill-whom=main``, ``kill -USR2 -PGID``), they killed it, and multiprocess
    warned "resource_tracker: process died unexpectedly, relaunching. Some resources
    might leak." It unblocks SIGINT and SIGTERM once started (in it, and in this
    thread); the others stay blocked in it, and :func:`blocked` restores this thread's
    mask."""
    with blocked(HANDLED):
        resource_tracker.ensure_running()


#: How :func:`ended` says a server ended that another part of this process reaped (a
#: ``waitpid(-1)``, SIGCHLD ignored): its exit status is gone.
REAPED = "ended (reaped elsewhere: its exit status is unknown)"


def server_pid() -> int | None:
    """The pid of this process's fork server (None before it first starts)."""
    pid: int | None = forkserver._forkserver._forkserver_pid
    return pid


def ended(pid: int, wait: float = 0.0) -> str | None:
    """How the fork server ``pid`` (a child of this process) ended (``was killed by
    SIGKILL``, ``exited with code 1``, :data:`REAPED`), or None while it runs (after
    waiting up to ``wait`` seconds for it to end). Does not reap it: multiprocess does,
    when it starts the next one."""
    deadline = time.monotonic() + wait
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped: by ensure_running (which wrote how) or not
            with _server_lock:
                return _replaced.get(pid, REAPED)
        if info is not None and info.si_pid != 0:
            break
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)
    if info.si_code == os.CLD_EXITED:
        return f"exited with code {info.si_status}"
    try:
        name = signal.Signals(info.si_status).name
    except ValueError:
        name = f"signal {info.si_status}"
    return f"was killed by {name}"


def _forget() -> None:
    """Make multiprocess forget a server that is gone and already reaped."""
    server = forkserver._forkserver
    with server._lock:
        if server._forkserver_alive_fd is not None:
            os.close(server._forkserver_alive_fd)
        server._forkserver_pid = None
        server._forkserver_alive_fd = None
        server._forkserver_address = None


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
