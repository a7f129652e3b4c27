"""The supervisor's loop: one thread that owns the workers.

Modelled on gunicorn's arbiter. One loop waits (``poll``) on every worker's result pipe
and process sentinel, on the writable task pipes and on a wake-up pipe, and then, in
order: acts on commands (signals, stop, scale, reload), reads results, reaps dead
workers (re-queueing what they held), kills workers whose heartbeat is stale while they
run a task, tops the worker count back up (with backoff, giving up instead of
crash-looping when workers die at boot) and dispatches queued tasks. Everything about
the workers is read and written on this thread only; other threads talk to it through
:meth:`Arbiter.command`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from chworkers.errors import SupervisorStoppedError, WorkerBootError
from chworkers.ops import workerlogs
from chworkers.workers import channel
from chworkers.workers.context import BEAT, BUSY, CURRENT, HEARTBEAT_SLOTS, STATE
from chworkers.workers.mainguard import EXIT_REIMPORTED, reimported_message
from chworkers.workers.worker import WorkerSpec, worker_main

if TYPE_CHECKING:
    from chworkers.workers.supervisor import Supervisor
    from chworkers.workers.tasks import Task

log = logging.getLogger(__name__)

_READ = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_CHECK_EVERY = 0.1  # s between heartbeat checks
_STOP_GRACE = 5.0  # s a stopping worker gets before SIGKILL
_YOUNG = 1.0  # s: a worker dying sooner counts towards the restart backoff
_PIPELINE = 0.05  # s of work a worker is sent ahead


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

    def public_state(self) -> str:
        if self.state == "starting":
            return "starting"
        if self.leaving is not None or self.kill_reason is not None:
            return "stopping"
        return "busy" if self.assigned else "idle"


class Arbiter:
    def __init__(self, sup: Supervisor, ctx: Any) -> None:
        self.sup = sup
        self.ctx = ctx
        self.opts = sup.options
        self.workers: dict[str, WorkerHandle] = {}
        self.target = self.opts.workers
        self.worker_settings: dict[str, Any] = {"retry": sup.retry}
        self.poller = select.poll()
        self.fds: dict[int, tuple[str, WorkerHandle | None]] = {}
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._register(self.wake_r, "wake", None, _READ)
        self.commands: deque[tuple[str, tuple[Any, ...], Future[Any] | None]] = deque()
        self.woken = False
        self.seq = 0
        self.mode: str | None = None  # None, draining, stopping
        self.drain_deadline = 0.0
        self.finished = threading.Event()
        self.ready = threading.Condition()
        self.error: BaseException | None = None
        self.boot_failures = 0
        self.last_boot_error: str | None = None
        self.young_deaths = 0
        self.next_spawn = 0.0
        self.next_check = 0.0
        self.task_time = 0.001  # moving average of task run time, sizes prefetch
        self.loop_beat = time.monotonic()
        self.thread = threading.Thread(target=self.run, name="chworkers-supervisor", daemon=True)

    # Talking to the loop from other threads.

    def wake(self) -> None:
        if not self.woken:
            self.woken = True
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self.wake_w, b"\0")

    def command(self, name: str, *args: Any, reply: bool = True) -> Future[Any] | None:
        future: Future[Any] | None = Future() if reply else None
        self.commands.append((name, args, future))
        self.wake()
        return future

    # The loop.

    def run(self) -> None:
        try:
            while not (self.mode == "stopping" and not self.workers):
                self._iteration()
        except BaseException as exc:
            log.exception("supervisor loop failed")
            self.error = self.error or exc
            for h in list(self.workers.values()):
                self._kill(h, "stopped")
                h.process.join(1.0)
                self._reap(h)
        finally:
            self._fail_all(self.error or SupervisorStoppedError("the supervisor stopped"))
            self.finished.set()
            with self.ready:
                self.ready.notify_all()
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.sup._loop_exited()

    def _iteration(self) -> None:
        events = self.poller.poll(self._timeout() * 1000)
        now = self.loop_beat = time.monotonic()
        for fd, _ in events:
            kind, h = self.fds.get(fd, ("", None))
            if kind == "wake":
                self.woken = False
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            elif kind == "results" and h is not None:
                self._read(h)
            elif kind == "sentinel" and h is not None:
                self._reap(h)
            elif kind == "outbox" and h is not None:
                self._flush(h)
        while self.commands:
            self._handle(*self.commands.popleft())
        if now >= self.next_check:
            self.next_check = now + _CHECK_EVERY
            self._check(now)
        self._spawn_missing(now)
        self._dispatch()
        self._progress_stop(now)

    def _timeout(self) -> float:
        timeout = _CHECK_EVERY
        if self.next_spawn > 0:
            timeout = min(timeout, max(0.0, self.next_spawn - time.monotonic()))
        return timeout

    def _register(self, fd: int, kind: str, h: WorkerHandle | None, events: int) -> None:
        self.fds[fd] = (kind, h)
        self.poller.register(fd, events)

    def _unregister(self, fd: int) -> None:
        if self.fds.pop(fd, None) is not None:
            self.poller.unregister(fd)

    # Commands.

    def _handle(self, name: str, args: tuple[Any, ...], future: Future[Any] | None) -> None:
        try:
            result = getattr(self.sup, f"_cmd_{name}")(self, *args)
        except BaseException as exc:
            if future is None:
                log.exception("supervisor command %s failed", name)
            else:
                future.set_exception(exc)
        else:
            if future is not None:
                future.set_result(result)

    # Workers: start, read, reap, check.

    def _spawn_missing(self, now: float) -> None:
        if self.mode == "stopping" or self.error is not None or now < self.next_spawn:
            return
        active = sum(1 for h in self.workers.values() if h.leaving is None)
        while active < self.target:
            self._spawn()
            active += 1
            if self.young_deaths:  # backing off: one at a time
                self.next_spawn = now + self._backoff()
                return
        self.next_spawn = 0.0

    def _backoff(self) -> float:
        delay = self.opts.restart_backoff * 2 ** max(0, self.young_deaths - 1)
        return float(min(self.opts.restart_backoff_max, delay))

    def _spawn(self) -> None:
        opts = self.opts
        self.seq += 1
        name = f"worker-{self.seq}"
        max_tasks = opts.max_tasks_per_worker
        if max_tasks is not None and opts.max_tasks_jitter:
            max_tasks += random.randint(0, opts.max_tasks_jitter)
        tasks_r, tasks_w = self.ctx.Pipe(duplex=False)
        results_r, results_w = self.ctx.Pipe(duplex=False)
        heartbeat = self.ctx.RawArray("d", HEARTBEAT_SLOTS)
        heartbeat[BEAT] = time.monotonic()
        fork = opts.start_method == "fork"
        spec = WorkerSpec(
            name=name,
            parent_pid=os.getpid(),
            connect=self.sup._connector(name),
            middleware=[m for m in self.sup.middleware if m.worker_side],
            heartbeat_interval=opts.heartbeat_interval,
            max_tasks=max_tasks,
            settings=dict(self.worker_settings),
            close_fds=[*self._own_fds(), tasks_w.fileno(), results_r.fileno()] if fork else (),
            log_levels=workerlogs.levels(),
            log_stderr=isinstance(sys.stderr, workerlogs.StderrToLog),
        )
        process = self.ctx.Process(
            target=worker_main, args=(spec, tasks_r, results_w, heartbeat), name=name, daemon=True
        )
        try:
            process.start()
        except Exception as exc:  # e.g. middleware that cannot be pickled: no point retrying
            tasks_r.close(), tasks_w.close(), results_r.close(), results_w.close()
            self._fatal(
                WorkerBootError(
                    f"cannot start a worker process: {type(exc).__name__}: {exc}",
                    failures=1,
                    last_error=str(exc),
                )
            )
            return
        tasks_r.close()
        results_w.close()
        outbox = channel.Outbox(os.dup(tasks_w.fileno()))
        tasks_w.close()
        h = WorkerHandle(name, process, outbox, results_r, heartbeat, max_tasks)
        self.workers[name] = h
        self._register(results_r.fileno(), "results", h, _READ)
        self._register(process.sentinel, "sentinel", h, _READ)
        log.debug("started %s (pid %s)", name, process.pid)

    def _own_fds(self) -> list[int]:
        """Descriptors of the supervisor a forked worker must not keep open."""
        # (Listening sockets and the daemon's lock close themselves: chworkers.forkguard.)
        fds = [self.wake_r, self.wake_w]
        for h in self.workers.values():
            fds += [h.outbox.fileno(), h.results.fileno()]
        return fds

    def _read(self, h: WorkerHandle) -> None:
        conn = h.results
        try:
            for _ in range(64):
                if not conn.poll(0):
                    break
                kind, body = channel.receive(conn)
                self._on_message(h, kind, body)
        except (EOFError, OSError):
            self._unregister(conn.fileno())

    def _on_message(self, h: WorkerHandle, kind: str, body: Any) -> None:
        if kind == channel.LOG:
            try:
                workerlogs.emit(body)
            except Exception:  # a handler's failure must not stop supervision
                log.exception("cannot log a record of %s", h.name)
        elif kind == channel.RESULTS:
            results, delta = body
            for task_id, ok, data, duration in results:
                task = h.assigned.pop(task_id, None)
                if task is None:
                    continue
                h.assigned_bytes -= task.nbytes
                h.done += 1
                self.task_time += (duration - self.task_time) * 0.05
                self.sup.outcomes.resolve(task, ok, data, duration)
            if delta is not None:
                h.gauges.update(self.sup.outcomes.apply_delta(delta))
        elif kind == channel.READY:
            h.state = "ready"
            h.ready_at = time.monotonic()
            self.boot_failures = 0
            with self.ready:
                self.ready.notify_all()
        elif kind == channel.BOOT_FAILED:
            h.boot_error = str(body)
        elif kind == channel.RETIRING:
            h.leaving = h.leaving or str(body)

    def _reap(self, h: WorkerHandle) -> None:
        self._read(h)  # results it sent before dying are results, not lost tasks
        h.process.join(0.5)
        exitcode = h.process.exitcode
        now = time.monotonic()
        self._unregister(h.results.fileno())
        self._unregister(h.process.sentinel)
        self._unregister(h.outbox.fileno())
        h.results.close()
        os.close(h.outbox.fileno())
        del self.workers[h.name]
        if self.sup.broker is not None:
            self.sup.broker.reclaim(h.name)
        booted = h.state != "starting"
        if h.kill_reason is not None:
            reason = h.kill_reason
        elif not booted:
            reason = "boot"
        elif exitcode == 0 and h.leaving is not None:
            reason = h.leaving  # recycled or stopped, as asked
        else:
            reason = "crashed"  # even if it was about to be recycled
        running = int(h.heartbeat[CURRENT])
        held = list(h.assigned.values())
        if held and self.mode != "stopping":
            self.sup.outcomes.requeue(
                held, running if reason in ("crashed", "hung") else None, reason
            )
        elif held:
            for task in held:
                self.sup.outcomes.fail(
                    task,
                    SupervisorStoppedError(
                        f"{task.description} was running when the supervisor stopped"
                    ),
                )
        level = logging.INFO if reason in ("recycled", "stopped") else logging.WARNING
        log.log(
            level,
            "%s (pid %s) exited with code %s: %s; %d task(s) handed back",
            h.name,
            h.pid,
            exitcode,
            reason,
            len(held) if self.mode != "stopping" else 0,
        )
        self.sup._worker_exited(h, reason)
        if reason in ("boot", "crashed", "hung") and self.mode is None:
            uptime = now - h.spawned_at
            self.young_deaths = self.young_deaths + 1 if uptime < _YOUNG or not booted else 0
            if self.young_deaths:
                self.next_spawn = now + self._backoff()
        if not booted and exitcode == EXIT_REIMPORTED:
            # The main module started a Supervisor in the worker: every worker would.
            self._fatal(
                WorkerBootError(
                    reimported_message(self.opts.start_method),
                    failures=1,
                    last_error=f"exit code {exitcode}",
                )
            )
        elif not booted and reason == "boot":
            self.boot_failures += 1
            self.last_boot_error = h.boot_error or f"exit code {exitcode}"
            if self.boot_failures >= self.opts.max_boot_failures:
                self._fatal(
                    WorkerBootError(
                        f"{self.boot_failures} worker processes in a row died while starting; "
                        f"last: {self.last_boot_error}",
                        failures=self.boot_failures,
                        last_error=self.last_boot_error,
                    )
                )

    def _check(self, now: float) -> None:
        for h in list(self.workers.values()):
            if h.stop_deadline is not None and now > h.stop_deadline:
                self._kill(h, h.kill_reason or h.leaving or "stopped", signal.SIGKILL)
            elif h.kill_reason is not None:
                continue
            elif h.state == "starting" and now - h.spawned_at > self.opts.boot_timeout:
                h.boot_error = f"not ready after {self.opts.boot_timeout} s"
                self._kill(h, "boot", signal.SIGKILL)
            elif h.heartbeat[STATE] == BUSY and now - h.heartbeat[BEAT] > self.opts.hung_timeout:
                log.warning(
                    "%s (pid %s) has not beaten for %.1f s while running task %d: killing it",
                    h.name,
                    h.pid,
                    now - h.heartbeat[BEAT],
                    int(h.heartbeat[CURRENT]),
                )
                self._kill(h, "hung", signal.SIGKILL)
            if h.ready_at is not None and now - h.ready_at > _YOUNG and self.young_deaths:
                self.young_deaths = 0

    def _kill(self, h: WorkerHandle, reason: str, signum: int = signal.SIGTERM) -> None:
        h.kill_reason = h.kill_reason or reason
        h.stop_deadline = h.stop_deadline or time.monotonic() + _STOP_GRACE
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(h.pid or 0, signum)

    # Dispatch.

    def _credit(self, h: WorkerHandle, limit: int) -> bool:
        n = len(h.assigned)
        if n >= limit or (n and h.assigned_bytes >= self.opts.prefetch_bytes):
            return False
        return h.max_tasks is None or h.dispatched < h.max_tasks

    def _dispatch(self) -> None:
        queue = self.sup.queue
        if not len(queue) or self.error is not None:
            return
        ready = [
            h
            for h in self.workers.values()
            if h.state == "ready" and h.leaving is None and h.kill_reason is None
        ]
        limit = max(2, min(self.opts.prefetch, int(_PIPELINE / max(self.task_time, 1e-6))))
        batches: dict[WorkerHandle, list[Task]] = {}
        pending: deque[Task] = deque()
        while ready:
            best = min(ready, key=lambda h: len(h.assigned))
            if not self._credit(best, limit):
                ready.remove(best)
                continue
            if not pending:
                # Take what the free credit can absorb in one go (one lock, not one per task).
                room = sum(max(1, limit - len(h.assigned)) for h in ready)
                pending.extend(queue.take_many(room))
                if not pending:
                    break
            task = pending.popleft()
            if not self.sup.outcomes.start(task):
                continue  # cancelled while queued
            best.assigned[task.id] = task
            best.assigned_bytes += task.nbytes
            best.dispatched += 1
            if best.max_tasks is not None and best.dispatched >= best.max_tasks:
                best.leaving = "recycled"  # its replacement starts now
            batches.setdefault(best, []).append(task)
        if pending:
            queue.requeue(pending)
        for h, batch in batches.items():
            h.outbox.put(channel.encode(channel.TASKS, [t.wire() for t in batch]))
            self._flush(h)

    def send(self, h: WorkerHandle, kind: str, body: Any) -> None:
        h.outbox.put(channel.encode(kind, body))
        self._flush(h)

    def _flush(self, h: WorkerHandle) -> None:
        fd = h.outbox.fileno()
        try:
            done = h.outbox.flush()
        except OSError:
            done = True  # the worker is gone; its sentinel will say so
        if done:
            self._unregister(fd)
        elif fd not in self.fds:
            self._register(fd, "outbox", h, select.POLLOUT)

    # Scaling and stopping.

    def scale(self, n: int) -> None:
        self.target = n
        active = [h for h in self.workers.values() if h.leaving is None and h.kill_reason is None]
        surplus = len(active) - n
        for h in sorted(active, key=lambda h: (h.state == "ready", len(h.assigned)))[
            : max(0, surplus)
        ]:
            self.retire(h, "stopped")

    def retire(self, h: WorkerHandle, reason: str) -> None:
        """Let a worker finish what it holds, then exit."""
        h.leaving = h.leaving or reason
        if h.state == "starting":
            self._kill(h, reason)
        else:
            self.send(h, channel.STOP, None)
            h.stop_deadline = time.monotonic() + self.opts.graceful_timeout + _STOP_GRACE

    def begin_stop(self, graceful: bool, timeout: float | None) -> None:
        self.sup.queue.close("the supervisor is stopping and accepts no new tasks")
        if graceful and self.mode is None:
            self.mode = "draining"
            self.drain_deadline = time.monotonic() + (
                self.opts.graceful_timeout if timeout is None else timeout
            )
            log.info("draining: %d queued, %d running", len(self.sup.queue), self.in_flight())
            return
        self._stop_workers(fast=not graceful or self.mode == "draining")

    def _stop_workers(self, fast: bool) -> None:
        self.mode = "stopping"
        for task in self.sup.queue.clear():
            self.sup.outcomes.fail(
                task,
                SupervisorStoppedError(f"{task.description} was not run: the supervisor stopped"),
            )
        for h in list(self.workers.values()):
            if fast or h.state == "starting":
                self._kill(h, "stopped")
            else:
                self.retire(h, "stopped")
                h.stop_deadline = time.monotonic() + _STOP_GRACE

    def in_flight(self) -> int:
        return sum(len(h.assigned) for h in self.workers.values())

    def _progress_stop(self, now: float) -> None:
        if self.mode != "draining":
            return
        if not len(self.sup.queue) and not self.in_flight():
            self._stop_workers(fast=False)
        elif now >= self.drain_deadline:
            log.warning(
                "graceful timeout: %d queued and %d running tasks left; terminating",
                len(self.sup.queue),
                self.in_flight(),
            )
            self._stop_workers(fast=True)

    def _fatal(self, error: BaseException) -> None:
        log.error("%s", error)
        self.error = self.error or error
        self.sup.queue.close(str(error))
        self._fail_all(error)
        self._stop_workers(fast=True)
        with self.ready:
            self.ready.notify_all()

    def _fail_all(self, error: BaseException) -> None:
        for task in self.sup.queue.clear():
            self.sup.outcomes.fail(task, error)
        for h in self.workers.values():
            for task in h.assigned.values():
                self.sup.outcomes.fail(task, error)
            h.assigned.clear()
            h.assigned_bytes = 0

    def wait_ready(self, timeout: float) -> None:
        """Block until the first workers are ready, raising when they cannot boot."""
        deadline = time.monotonic() + timeout
        with self.ready:
            while True:
                if self.error is not None:
                    raise self.error
                if self.finished.is_set():
                    raise SupervisorStoppedError("the supervisor stopped while starting")
                starting = [h for h in list(self.workers.values()) if h.state == "starting"]
                if self.workers and not starting:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WorkerBootError(
                        f"workers not ready after {timeout} s",
                        failures=self.boot_failures,
                        last_error=self.last_boot_error,
                    )
                self.ready.wait(min(remaining, 0.1))

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "name": h.name,
                "pid": h.pid,
                "state": h.public_state(),
                "done": h.done,
                "in_flight": len(h.assigned),
                "max_tasks": h.max_tasks,
            }
            for h in self.workers.values()
        ]
