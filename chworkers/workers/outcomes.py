"""What happens when a task finishes: futures, metrics, dead letters, re-queueing.

The supervisor's loop hands every outcome here: a result or an error from a worker, a
task whose worker died, a task cancelled before it ran. :class:`Outcomes` resolves the
future, counts the outcome in the Prometheus instruments, hands failures that retrying
cannot fix to the middleware's dead-letter hook, and keeps the count of tasks still
outstanding that :meth:`Supervisor.drain` waits on. Everything here but
:meth:`Outcomes.admit` and :meth:`Outcomes.withdraw` runs on the loop thread.

Of the retry layers (docs/daemon.md, "Retry layers") this is the requeue: it repeats a
task only when its worker died or hung under it (:meth:`Outcomes.requeue`, at most
``max_task_crashes`` times), never because of the task's own error, which the worker's
retry policy already judged; :func:`is_permanent` reads that judgement for the layers
above.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import InvalidStateError
from typing import Any

from chworkers.clickhouse import native
from chworkers.clickhouse.inserts import InsertResult
from chworkers.clickhouse.retry import RetryPolicy, Verdict
from chworkers.errors import (
    BatchError,
    ChworkersError,
    SerializationError,
    ServerError,
    TaskError,
    WorkerLostError,
)
from chworkers.ops.metrics import Metrics
from chworkers.wording import plural
from chworkers.workers import results, tasks
from chworkers.workers.context import TaskInfo
from chworkers.workers.deadletter import DeadLetter
from chworkers.workers.middleware import Middleware
from chworkers.workers.options import SupervisorOptions
from chworkers.workers.recorder import MetricsDelta, apply_delta
from chworkers.workers.taskqueue import TaskQueue
from chworkers.workers.tasks import Task

log = logging.getLogger(__name__)


#: Why a worker was replaced (``chworkers_worker_restarts_total``'s reason): it died,
#: hung, ran ``max_tasks_per_worker`` tasks, went over ``max_worker_memory``, or was
#: replaced by a rolling restart.
RESTART_REASONS = ("crashed", "hung", "recycled", "memory", "rolling", "forkserver")


class Outcomes:
    def __init__(
        self,
        metrics: Metrics,
        middleware: list[Middleware],
        queue: TaskQueue,
        options: Callable[[], SupervisorOptions],
        policy: Callable[[], RetryPolicy],
    ) -> None:
        self.metrics = metrics
        self.middleware = middleware
        self.queue = queue
        self.options = options
        self.policy = policy
        self.schemas = native.SchemaCache()
        self.counts: Counter[str] = Counter()
        self.restarts: Counter[str] = Counter()
        self.idle = threading.Condition()
        self.outstanding = 0
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def admit(self) -> None:
        """A producer is about to queue a task."""
        with self.idle:
            self.outstanding += 1
            self.counts["submitted"] += 1

    def withdraw(self) -> None:
        """The task could not be queued after all."""
        with self.idle:
            self.outstanding -= 1
            self.counts["submitted"] -= 1

    def wait_idle(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.idle:
            while self.outstanding:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.idle.wait(0.1 if remaining is None else min(remaining, 0.1))
        return True

    def start(self, task: Task) -> bool:
        if task.started:
            return True
        if task.future.set_running_or_notify_cancel():
            task.started = True
            return True
        self.finish(task, None, None)
        self.counts["cancelled"] += 1
        return False

    def resolve(self, task: Task, ok: bool, data: bytes, duration: float) -> None:
        error: BaseException | None = None
        value: Any = None
        try:
            value = results.decode_result(data) if ok else None
            if not ok:
                error = results.decode_error(data)
        except Exception as exc:
            error = SerializationError(
                f"cannot read the result of {task.description}: {exc}",
                what="result",
                error_type=type(exc).__name__,
            )
        m = self.metrics
        self._child(m.task_duration, task.kind).observe(duration)
        if error is None:
            self._child(m.tasks, task.kind, "success").inc()
            self.counts["succeeded"] += 1
            if task.kind == tasks.INSERT and task.table is not None:
                value = self._inserted(task, value)
        else:
            if isinstance(error, TaskError | SerializationError):
                m.errors.labels("task", "").inc()
            self.fail(task, error, duration)
            return
        self._after_task_done(task, None, duration)
        self.finish(task, value, None)

    def _inserted(self, task: Task, result: InsertResult) -> Any:
        """Count a confirmed insert once, the rows of a caller's replay apart
        (ClickHouse counts the rows it dropped as duplicates as written, and the caller
        may have counted them before); returns what the future resolves to.

        Rows are the table's: those sent that ClickHouse took, when the task knows how
        many it sent. ClickHouse's summary (``written_rows``) also counts what the
        table's materialized views wrote into their targets (ClickHouse issue 18237), so
        it is only used when the task does not know its rows, or when ClickHouse wrote
        fewer (``input_format_allow_errors_num`` skipped some). Bytes are ClickHouse's
        ``written_bytes``, views included: it says no more.
        """
        m, table = self.metrics, task.table or ""
        rows = result.rows
        if task.rows > 0:  # the rows we sent that it took; 0: a raw insert of unknown rows
            taken = max(0, task.rows - sum(r.rows for r in result.rejected))
            rows = taken if rows is None else min(rows, taken)
        elif rows is None:
            rows = 0
        # Sent before by the caller, who may have counted it then: all a replay. Our own
        # retries (a lost answer, a worker that died under it) are not: no attempt of
        # theirs was counted, so this confirmation is the rows' first count either way.
        replayed = rows if task.replay else 0
        self._child(m.rows_inserted, table).inc(rows - replayed)
        # Even by 0: a table's series exists from its first insert, so rate() reads 0
        # rather than nothing until its first replay.
        self._child(m.rows_replayed, table).inc(replayed)
        if result.bytes is not None:
            self._child(m.bytes_inserted, table).inc(result.bytes)
        self._child(m.last_insert, table).set(time.time())
        if task.detailed:
            return dataclasses.replace(result, rows=rows, replayed=replayed)
        return rows

    def _after_task_done(self, task: Task, error: BaseException | None, duration: float) -> None:
        if self.middleware:
            info = TaskInfo(task.id, task.kind, task.table, task.rows, task.shard)
            for middleware in self.middleware:
                _safely(middleware.after_task_done, info, error, duration)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: this runs for every task."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def fail(
        self, task: Task, error: BaseException, duration: float = 0.0, reason: str = "error"
    ) -> None:
        self._child(self.metrics.tasks, task.kind, "failure").inc()
        self.counts["failed"] += 1
        self._after_task_done(task, error, duration)
        if task.kind == tasks.INSERT and isinstance(error, ServerError) and task.table:
            self.schemas.forget(task.table)  # the table may have changed under us
        if not task.internal and (reason != "error" or is_permanent(error, self.policy())):
            letter = DeadLetter(
                task.id,
                task.kind,
                task.description,
                error,
                reason,
                task.table,
                task.rows,
                task.token,
                task.payload,
                tuple(task.buffers),
            )
            for middleware in self.middleware:
                _safely(middleware.after_dead_letter, letter)
        self.finish(task, None, error)

    def finish(self, task: Task, value: Any, error: BaseException | None) -> None:
        task.release()
        try:
            if error is not None:
                task.future.set_exception(error)
            else:
                task.future.set_result(value)
        except InvalidStateError:
            pass  # cancelled before it ran
        with self.idle:
            self.outstanding -= 1
            if not self.outstanding:
                self.idle.notify_all()

    def requeue(self, held: list[Task], running: int | None, reason: str) -> None:
        back = []
        for task in held:
            if task.id == running:
                task.crashes += 1
                if task.crashes >= self.options().max_task_crashes:
                    error = WorkerLostError(
                        f"{task.description}: its worker {reason} {plural(task.crashes, 'time')} while "
                        "running it; giving up",
                        task_id=task.id,
                        attempts=task.crashes,
                        reason=reason,
                    )
                    self.fail(task, error, reason=reason)
                    continue
            back.append(task)
            self._child(self.metrics.tasks, task.kind, "requeued").inc()
            self.counts["requeued"] += 1
        self.queue.requeue(back)

    def apply_delta(self, delta: MetricsDelta) -> dict[str, float]:
        return apply_delta(self.metrics, delta)

    def worker_exited(self, name: str, pid: int | None, reason: str, *, replaced: bool) -> None:
        if replaced and reason in RESTART_REASONS:
            self.metrics.worker_restarts.labels(reason).inc()
            self.restarts[reason] += 1
        for middleware in self.middleware:
            _safely(middleware.after_worker_exit, name, pid, reason)


def is_permanent(error: BaseException, policy: RetryPolicy) -> bool:
    """Whether retrying ``error`` later cannot help (it goes to the dead-letter hook).

    Bad tasks and data, and ClickHouse errors the retry policy calls fatal (unknown table,
    type or parse errors) are permanent; outages (transport, pool, exhausted retries of
    transient errors) and stops are not: the same task may succeed later.
    """
    if isinstance(error, TaskError | SerializationError | BatchError | WorkerLostError):
        return True
    if isinstance(error, ServerError):
        return policy.classify(error) is Verdict.FATAL
    return not isinstance(error, ChworkersError)


def _safely(hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        log.exception("middleware hook %s failed", getattr(hook, "__qualname__", hook))
