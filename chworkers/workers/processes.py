"""The worker processes of one supervisor: start them, talk to them, kill and reap them.

:class:`WorkerHandle` is the supervisor's view of one worker; :class:`Processes` is the
table of them with the descriptors the loop polls (result pipes, process sentinels,
task pipes waiting to drain, a wake-up pipe). It holds the mechanics; the owner of the
supervisor's state (:class:`~chworkers.workers.arbiter.Arbiter`) decides which workers
to start, retire or kill and what a death means, and calls every method here from its
loop thread, except :meth:`Processes.wake`, which any thread may call.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import logging
import os
import select
import signal
import termios
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from chworkers.workers import channel, forkserver
from chworkers.workers.commands import WorkerSnapshot
from chworkers.workers.context import BEAT, HEARTBEAT_SLOTS
from chworkers.workers.signals import HANDLED, blocked
from chworkers.workers.tasks import Task
from chworkers.workers.worker import WorkerSpec, worker_main

log = logging.getLogger(__name__)

_READ = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
STOP_GRACE = 5.0  # s a stopping worker gets before SIGKILL
#: The exit code multiprocess gives a forkserver worker whose status pipe broke.
LOST_STATUS = 255
#: How long a worker whose fork server died waits for the server to be seen dead (to
#: say how it ended): its pipes close a moment before it can be waited for.
SERVER_DEATH_WAIT = 1.0

#: Builds a worker's configuration from its name and the descriptors a forked child
#: must close.
SpecFactory = Callable[[str, Sequence[int]], WorkerSpec]


class WorkerHandle:
    """The supervisor's view of one worker process."""

    def __init__(
        self,
        name: str,
        process: Any,
        outbox: channel.Outbox,
        results: Any,
        heartbeat: Any,
        max_tasks: int | None,
    ) -> None:
        self.name = name
        self.process = process
        self.pid: int | None = process.pid
        self.outbox = outbox
        self.results = results
        self.heartbeat = heartbeat
        self.max_tasks = max_tasks
        self.state = "starting"  # -> ready -> (gone)
        self.leaving: str | None = None  # why it will exit: recycled, stopped
        self.kill_reason: str | None = None
        self.assigned: dict[int, Task] = {}
        self.assigned_bytes = 0
        self.dispatched = 0
        self.done = 0
        self.spawned_at = time.monotonic()
        self.ready_at: float | None = None
        self.stop_deadline: float | None = None
        self.boot_error: str | None = None
        self.gauges: dict[str, float] = {}
        #: The fork server that forked it (start method ``forkserver``), else None.
        self.server_pid: int | None = None
        #: A pidfd of the process, where the kernel has them: a signal through it
        #: reaches this process, never another that took its pid once it was reaped
        #: (under forkserver it is not this process's child: its pid may be reused at once).
        self.pidfd: int | None = None

    def public_state(self) -> str:
        if self.state == "starting":
            return "starting"
        if self.leaving is not None or self.kill_reason is not None:
            return "stopping"
        return "busy" if self.assigned else "idle"

    def accepts_tasks(self) -> bool:
        return self.state == "ready" and self.leaving is None and self.kill_reason is None

    def snapshot(self) -> WorkerSnapshot:
        return {
            "name": self.name,
            "pid": self.pid,
            "state": self.public_state(),
            "done": self.done,
            "in_flight": len(self.assigned),
            "max_tasks": self.max_tasks,
        }


class Processes:
    """The table of worker processes and the descriptors the loop polls."""

    def __init__(
        self, ctx: Any, on_server_restart: Callable[[forkserver.Restart], None] | None = None
    ) -> None:
        self.ctx = ctx
        self.on_server_restart = on_server_restart
        self.table: dict[str, WorkerHandle] = {}
        self._seq = 0
        self._poller = select.poll()
        self._fds: dict[int, tuple[str, WorkerHandle | None]] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._woken = False
        self._register(self._wake_r, "wake", None, _READ)

    def wake(self) -> None:
        """Interrupt :meth:`poll` (from any thread)."""
        if not self._woken:
            self._woken = True
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"\0")

    def poll(self, timeout: float) -> list[tuple[str, WorkerHandle]]:
        """Wait up to ``timeout`` seconds; returns what happened: ("results" | "sentinel"
        | "outbox", worker)."""
        events = self._poller.poll(timeout * 1000)
        out = []
        for fd, _ in events:
            kind, h = self._fds.get(fd, ("", None))
            if kind == "wake":
                self._woken = False
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            elif h is not None:
                out.append((kind, h))
        return out

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _register(self, fd: int, kind: str, h: WorkerHandle | None, events: int) -> None:
        self._fds[fd] = (kind, h)
        self._poller.register(fd, events)

    def _unregister(self, fd: int) -> None:
        if self._fds.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def start(self, make_spec: SpecFactory, fork: bool) -> WorkerHandle:
        """Start a worker process; raises what starting it raised (e.g. middleware that
        cannot be pickled)."""
        self._seq += 1
        name = f"worker-{self._seq}"
        tasks_r, tasks_w = self.ctx.Pipe(duplex=False)
        results_r, results_w = self.ctx.Pipe(duplex=False)
        heartbeat = self.ctx.RawArray("d", HEARTBEAT_SLOTS)
        heartbeat[BEAT] = time.monotonic()
        close_fds = [*self._own_fds(), tasks_w.fileno(), results_r.fileno()] if fork else ()
        spec = make_spec(name, close_fds)
        process = self.ctx.Process(
            target=worker_main, args=(spec, tasks_r, results_w, heartbeat), name=name, daemon=True
        )
        try:
            restarts = _start(process, self.ctx.get_start_method())
        except Exception:
            tasks_r.close(), tasks_w.close(), results_r.close(), results_w.close()
            raise
        tasks_r.close()
        results_w.close()
        outbox = channel.Outbox(os.dup(tasks_w.fileno()))
        tasks_w.close()
        h = WorkerHandle(name, process, outbox, results_r, heartbeat, spec.max_tasks)
        if self.ctx.get_start_method() == "forkserver":
            h.server_pid = forkserver.server_pid()
        with contextlib.suppress(OSError, AttributeError):  # gone already; an old kernel
            h.pidfd = os.pidfd_open(process.pid)
        for restart in restarts:
            if self.on_server_restart is not None:
                self.on_server_restart(restart)
        self.table[name] = h
        self._register(results_r.fileno(), "results", h, _READ)
        self._register(process.sentinel, "sentinel", h, _READ)
        log.debug("started %s (pid %s)", name, process.pid)
        return h

    def _own_fds(self) -> list[int]:
        """Descriptors of the supervisor a forked worker must not keep open."""
        # (Listening sockets and the daemon's lock close themselves: chworkers.forkguard.)
        fds = [self._wake_r, self._wake_w]
        for h in self.table.values():
            fds += [h.outbox.fileno(), h.results.fileno()]
            fds += [h.pidfd] if h.pidfd is not None else []
        return fds

    def messages(self, h: WorkerHandle) -> Iterator[tuple[str, Any]]:
        """The messages the worker has sent so far (a bounded number per call)."""
        conn = h.results
        try:
            for _ in range(64):
                if not conn.poll(0):
                    break
                yield channel.receive(conn)
        except (EOFError, OSError):
            self._unregister(conn.fileno())

    def lost_server(self, h: WorkerHandle) -> str | None:
        """How the fork server that forked ``h`` ended, when it did (the worker's exit
        status went with it: multiprocess says 255 whether it exited or not); else None.
        Call it once ``h``'s sentinel is ready, before anything reads its exit code.

        The sentinel is the pipe the server writes the worker's exit status down, then
        closes: a status in it is the worker's own (a real 255 included), answered at
        once; a pipe closed with nothing in it is the server gone."""
        if h.server_pid is None:
            return None
        sent = status_sent(h.process.sentinel)  # before exitcode reads it
        if sent is None or h.process.exitcode != LOST_STATUS:
            return None
        if sent:
            return None  # the server said 255: the worker's own exit code
        # The server's pipes close as it dies, a moment before it can be waited for.
        return forkserver.ended(h.server_pid, wait=SERVER_DEATH_WAIT) or "ended"

    def wait_exit(self, h: WorkerHandle, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``h``'s sentinel to be ready, without
        reading its exit status (:meth:`lost_server` needs it unread)."""
        poller = select.poll()
        poller.register(h.process.sentinel, _READ)
        return bool(poller.poll(max(0.0, timeout) * 1000))

    def remove(self, h: WorkerHandle) -> int | None:
        """Forget a worker that exited (or is about to); returns its exit code."""
        h.process.join(0.5)
        self._unregister(h.results.fileno())
        self._unregister(h.process.sentinel)
        self._unregister(h.outbox.fileno())
        h.results.close()
        os.close(h.outbox.fileno())
        if h.pidfd is not None:
            os.close(h.pidfd)
            h.pidfd = None
        del self.table[h.name]
        exitcode: int | None = h.process.exitcode
        return exitcode

    def kill(self, h: WorkerHandle, reason: str, signum: int = signal.SIGKILL) -> None:
        """Kill a worker now. Workers ignore SIGTERM while their supervisor lives (a
        SIGTERM to the whole process group must not cut their tasks), so a worker that
        must go at once gets SIGKILL; one that may finish its task gets ``STOP``."""
        h.kill_reason = h.kill_reason or reason
        h.stop_deadline = h.stop_deadline or time.monotonic() + STOP_GRACE
        with contextlib.suppress(ProcessLookupError, TypeError):
            if h.pidfd is not None:
                signal.pidfd_send_signal(h.pidfd, signum)
            else:
                os.kill(h.pid or 0, signum)

    def send(self, h: WorkerHandle, kind: str, body: Any) -> None:
        h.outbox.put(channel.encode(kind, body))
        self.flush(h)

    def flush(self, h: WorkerHandle) -> None:
        """Write what the worker's pipe takes without blocking; the rest when it drains."""
        fd = h.outbox.fileno()
        try:
            done = h.outbox.flush()
        except OSError:
            done = True  # the worker is gone; its sentinel will say so
        if done:
            self._unregister(fd)
        elif fd not in self._fds:
            self._register(fd, "outbox", h, select.POLLOUT)


def status_sent(fd: int) -> bool | None:
    """Whether a forkserver worker's sentinel ``fd`` holds its exit status (True), is
    closed with nothing in it (False: the fork server died), or is not ready yet (None)."""
    poller = select.poll()
    poller.register(fd, _READ)
    if not poller.poll(0):
        return None
    pending = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, pending)
    except OSError:
        return None
    return pending[0] > 0


def _start(process: Any, start_method: str) -> list[forkserver.Restart]:
    """Start a worker process with the supervisor's signals blocked: it inherits the mask
    and unblocks them once it has set its own dispositions, so a signal sent to the
    whole process group while it starts cannot kill it (see ``worker_main``). Returns
    the fork servers found dead and replaced meanwhile."""
    # Starting the resource tracker (spawn, forkserver) unblocks SIGINT and SIGTERM in
    # this thread: start it, and the fork server, before blocking.
    restarts: list[forkserver.Restart] = []
    if start_method == "forkserver":
        restart = forkserver.ensure_running()
        restarts += [restart] if restart is not None else []
    elif start_method == "spawn":
        forkserver.ensure_tracker()
    try:
        with blocked(HANDLED):
            process.start()
    except (OSError, EOFError):
        # The fork server died between the check and the request (its socket refused,
        # or it never sent the pid): start a new one and try once more.
        pid = forkserver.server_pid() if start_method == "forkserver" else None
        if pid is None or forkserver.ended(pid) is None:
            raise
        restart = forkserver.ensure_running()
        restarts += [restart] if restart is not None else []
        with blocked(HANDLED):
            process.start()
    return restarts
