"""Rolling restarts: replace every worker, one at a time, the new one ready first.

:meth:`Supervisor.restart_workers` (and SIGUSR2) replaces the workers that run when it
is asked, after a deploy or a change to what workers import, without a pause in
capacity: for each old worker a fresh one is started beside it (one more process than
``workers`` for a while); once the fresh one has reported ready, the old one is told to
stop, finishes what it was sent (nothing is lost, nothing runs twice) and exits; only
then does the next step begin. Ready workers therefore never drop below the count
there was (below it only if a worker crashes meanwhile, as at any time), and there are
never more than ``workers + 1`` processes plus the one draining.

It belongs to the :class:`~chworkers.workers.crew.Crew` and runs on the supervisor's
loop: :meth:`Rollout.step` is called on every turn. A worker that dies or is recycled
while it waits its turn is simply not replaced again (its replacement is already new);
one that leaves while its fresh successor boots (a scale-down retires the workers still
to replace first) hands that successor to the next old worker, so a rolling restart and
a scale-down at once start no worker more than the new count needs;
a fresh worker that dies at boot is started again (after the crew's restart backoff),
and after ``max_boot_failures`` of them in a row the rollout is abandoned with a
:class:`WorkerBootError` while the old workers go on serving: a deploy that breaks
what workers import does not take the pool down. Stopping the supervisor abandons the
rollout.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future
from typing import Protocol

from chworkers.errors import SupervisorStoppedError, WorkerBootError
from chworkers.workers.processes import WorkerHandle

log = logging.getLogger(__name__)


class _Crew(Protocol):
    """What a rollout needs of the crew."""

    @property
    def workers(self) -> dict[str, WorkerHandle]: ...

    @property
    def target(self) -> int: ...

    @property
    def next_spawn(self) -> float: ...

    def spawn(self) -> WorkerHandle | None: ...

    def retire(self, h: WorkerHandle, reason: str) -> None: ...

    def scale(self, n: int) -> None: ...


class Rollout:
    """One rolling restart at a time; asking again while it runs adds the workers that
    run by then (a second deploy during the first) and answers when all are done."""

    def __init__(self, crew: _Crew) -> None:
        self.crew = crew
        self.pending: deque[str] = deque()  # old workers still to replace, in order
        self.fresh: str | None = None  # the worker started for the current step
        #: The workers this rollout started: a request joining it does not replace them.
        self.started: set[str] = set()
        self.old: str | None = None  # the old worker it replaces
        self.draining: str | None = None  # the old worker told to stop, until gone
        self.replaced = 0
        self.failures = 0  # fresh workers in a row that died while booting
        self.started_at = 0.0
        self.waiters: list[Future[int]] = []

    @property
    def running(self) -> bool:
        return bool(self.waiters)

    def extra(self) -> str | None:
        """The fresh worker started beside the old ones: not part of ``workers`` yet."""
        h = self.crew.workers.get(self.fresh or "")
        return h.name if h is not None and h.leaving is None and h.kill_reason is None else None

    def to_replace(self) -> set[str]:
        """The old workers this rollout has still to replace (the current one included):
        those a scale-down retires first, since they are going anyway."""
        if not self.running:
            return set()
        return set(self.pending) | ({self.old} if self.old is not None else set())

    def request(self) -> Future[int]:
        """Replace the workers that run now; the future's result is how many were
        replaced (when all are)."""
        future: Future[int] = Future()
        if not self.running:
            self.started.clear()  # a new rollout: every worker that runs now is old
        known = set(self.pending) | {self.old, self.fresh} | self.started
        names = [name for name, h in self.crew.workers.items() if _active(h) and name not in known]
        joining = self.running
        if not joining:
            self.replaced = self.failures = 0
            self.started_at = time.monotonic()
        self.pending.extend(names)
        self.waiters.append(future)
        # The one being replaced counts, and is named, with those still to go.
        # The one being replaced: the old worker of this step, or, once its fresh
        # worker is ready, the old one finishing its tasks (named either way: which
        # of the two it is depends only on how fast the fresh worker booted).
        current = [n for n in (self.old, self.draining) if n is not None and n in self.crew.workers]
        left = current + list(self.pending)
        if joining:
            log.info(
                "rolling restart: asked again while one runs: %d worker(s) still to replace "
                "(%s), %d of them started since it began",
                len(left),
                ", ".join(left) or "-",
                len(names),
            )
        else:
            log.info(
                "rolling restart: replacing %d worker(s) one at a time (%s)",
                len(left),
                ", ".join(left),
            )
        return future

    def step(self, now: float) -> None:
        """On the loop: take the rollout one step further when it can."""
        if not self.running:
            return
        crew = self.crew
        table = crew.workers
        if self.draining is not None:
            if self.draining in table:
                return  # one old worker leaves at a time
            self.draining = None
        if self.fresh is not None:
            h = table.get(self.fresh)
            if h is None or not _active(h):
                self.fresh = None  # died while booting: start another (boot failures count)
            elif h.state != "ready":
                return
            else:
                self._swap(h)
                return
        self.old = self._next_old(table)
        if self.old is None:
            self._finish()
            return
        if now < crew.next_spawn:
            return  # workers died young: the crew's backoff applies to us too
        fresh = crew.spawn()
        if fresh is not None:
            self.fresh = fresh.name
            self.started.add(fresh.name)

    def _next_old(self, table: dict[str, WorkerHandle]) -> str | None:
        if self.old is not None and self.old in table and _active(table[self.old]):
            return self.old
        while self.pending:
            name = self.pending.popleft()
            h = table.get(name)
            if h is not None and _active(h):
                return name
        return None

    def boot_failed(self, name: str, error: str, limit: int) -> bool:
        """A worker died while booting: whether it was this rollout's fresh one (then
        its failure is the rollout's, not the pool's)."""
        if not self.running or name != self.fresh:
            return False
        self.fresh = None
        self.failures += 1
        log.warning(
            "rolling restart: fresh worker %s died while booting (%d in a row): %s",
            name,
            self.failures,
            error,
        )
        if self.failures >= limit:
            self.abandon(
                f"{self.failures} fresh workers in a row died while booting; the old "
                f"workers keep serving; last: {error}",
                WorkerBootError(
                    f"rolling restart abandoned: {self.failures} fresh workers in a row "
                    f"died while booting; last: {error}",
                    failures=self.failures,
                    last_error=error,
                ),
            )
        return True

    def _swap(self, fresh: WorkerHandle) -> None:
        table = self.crew.workers
        self.fresh = None
        self.failures = 0
        # The old one may have left meanwhile (a scale-down retired it, it crashed or was
        # recycled): the fresh one replaces the next old one instead, rather than being
        # one too many while yet another is started for that one.
        self.old = self._next_old(table)
        old = table.get(self.old or "")
        if old is None:
            # None left to replace: the fresh one is one too many (the crew had already
            # replaced the one that crashed), so the count is brought back to the target.
            self.old = None
            self.crew.scale(self.crew.target)
            return
        log.info(
            "rolling restart: %s (pid %s) is ready; %s (pid %s) finishes its %d task(s) and stops",
            fresh.name,
            fresh.pid,
            old.name,
            old.pid,
            len(old.assigned),
        )
        self.crew.retire(old, "rolling")
        self.draining = old.name
        self.old = None
        self.replaced += 1

    def _finish(self) -> None:
        log.info(
            "rolling restart done: %d worker(s) replaced in %.1f s",
            self.replaced,
            time.monotonic() - self.started_at,
        )
        waiters, self.waiters = self.waiters, []
        for future in waiters:
            future.set_result(self.replaced)

    def abandon(self, why: str, error: BaseException | None = None) -> None:
        """The rollout ends where it is (the supervisor stops, or fresh workers cannot
        boot); its callers get ``error`` (by default a :class:`SupervisorStoppedError`)."""
        if not self.running:
            return
        log.warning("rolling restart abandoned after %d worker(s): %s", self.replaced, why)
        self.pending.clear()
        self.fresh = self.old = self.draining = None
        waiters, self.waiters = self.waiters, []
        for future in waiters:
            future.set_exception(
                error or SupervisorStoppedError(f"rolling restart abandoned: {why}")
            )


def _active(h: WorkerHandle) -> bool:
    return h.leaving is None and h.kill_reason is None
