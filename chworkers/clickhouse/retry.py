"""Retry as a value: which errors to repeat, how often, and how long to wait.

:class:`RetryPolicy` follows urllib3's ``Retry``: it is an immutable value, and
:meth:`RetryPolicy.increment` returns the *next* state after a failure or raises when no
attempt is left. The backoff is computed from that state (exponential, with full jitter,
capped, and clipped to an overall deadline).

Classification only looks at chworkers' own error tree (drivers' exceptions are translated
in :mod:`chworkers.clickhouse.translate`):

* :class:`~chworkers.errors.ConnectError` (the request was never sent) is always retried;
* :class:`~chworkers.errors.ResponseTimeoutError` and
  :class:`~chworkers.errors.ConnectionLostError` (the request *may* have been applied) are
  retried only when the operation is idempotent: a read, or an insert that carries an
  ``insert_deduplication_token`` (every insert through :class:`~chworkers.clickhouse.pool.ConnectionPool`
  does);
* :class:`~chworkers.errors.ServerError` is retried when its ClickHouse code is transient
  (:data:`RETRYABLE_CODES`) or, lacking a code, when its HTTP status is (502, 503, 504, 429);
  a server error on a non-idempotent write is treated as "maybe applied" as well;
* everything else (syntax, unknown table or column, type and parse errors, authentication,
  bad input, pool errors, the caller's own exceptions) fails at once.

This is the innermost retry layer (docs/daemon.md, "Retry layers"), applied per request
in the worker, and the only place an error is classified: the bisection of row errors
(:mod:`chworkers.clickhouse.inserts`), the supervisor's requeue of tasks whose worker died
(:mod:`chworkers.workers.outcomes`) and the daemon's per-batch backoff
(:mod:`chworkers.daemon.dispatch`) act on what it gave up on, each on its own kind of failure.
"""

from __future__ import annotations

import copy
import enum
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from chworkers.backoff import capped_backoff
from chworkers.clickhouse.partitions import is_too_many_partitions
from chworkers.errors import (
    ChworkersError,
    ConfigError,
    RetriesExhaustedError,
    ServerError,
    TransportError,
    WorkerLostError,
)
from chworkers.settings import build, setting, validate

#: ClickHouse error codes worth another attempt, with their names. The first fifteen are the
#: issue's list; the rest are additions, each a condition that goes away by itself:
#: 32 (a truncated stream, like 3), 198 (DNS resolution failed), 225 and 999 (Keeper
#: unavailable), 279 (no replica of a distributed query reachable yet), 373 (a session still
#: busy with the previous query), 439 (the server's thread pool is full), 243 (the disk
#: is full: merges, TTLs and operators free space, and the batch waits in the spool).
RETRYABLE_CODES: Mapping[int, str] = {
    3: "UNEXPECTED_END_OF_FILE",
    107: "FILE_DOESNT_EXIST",
    159: "TIMEOUT_EXCEEDED",
    164: "READONLY",
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    203: "NO_FREE_CONNECTION",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    241: "MEMORY_LIMIT_EXCEEDED",
    242: "TABLE_IS_READ_ONLY",
    252: "TOO_MANY_PARTS",
    285: "TOO_FEW_LIVE_REPLICAS",
    319: "UNKNOWN_STATUS_OF_INSERT",
    425: "SYSTEM_ERROR",
    999: "KEEPER_EXCEPTION",
    # Additions (see above).
    32: "ATTEMPT_TO_READ_AFTER_EOF",
    198: "DNS_ERROR",
    225: "NO_ZOOKEEPER",
    279: "ALL_CONNECTION_TRIES_FAILED",
    373: "SESSION_IS_LOCKED",
    439: "CANNOT_SCHEDULE_TASK",
    243: "NOT_ENOUGH_SPACE",
}

#: Codes that ClickHouse raises before it touches any data: a write failing with one of
#: these was certainly not applied, so it may be retried even without a deduplication token.
NOT_APPLIED_CODES = frozenset({164, 202, 203, 242, 252, 285, 373, 439})

#: Codes of requests ClickHouse refused before it read any data: the table, database or
#: column is unknown, the statement does not parse, the user may not insert.
REFUSED_CODES = frozenset({16, 47, 60, 62, 81, 192, 193, 194, 497, 516})

#: HTTP statuses retried when the answer carries no ClickHouse code: a proxy or load balancer
#: in front of ClickHouse (502, 504), an overloaded or starting server (503) and rate
#: limiting (429, which clickhouse-connect also treats as retryable).
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


class Verdict(enum.Enum):
    """How :meth:`RetryPolicy.classify` judges an error."""

    RETRY = "retry"
    #: The error is transient but the operation may have been applied and is not idempotent.
    UNSAFE = "unsafe"
    FATAL = "fatal"


def maybe_applied(error: BaseException) -> bool:
    """Whether a write that failed with ``error`` may have been applied all the same, in
    whole or in part: sent again, it is then a replay, and ClickHouse drops what it
    already has by the deduplication token (while still counting those rows as written
    in its summary). False only when the write certainly never reached the table: not
    sent, refused before any data was read, or failed before ClickHouse was called."""
    if isinstance(error, RetriesExhaustedError):
        return bool(getattr(error, "maybe_applied", True))
    if isinstance(error, TransportError):
        return bool(error.sent)
    if isinstance(error, ServerError):
        return error.code is None or error.code not in NOT_APPLIED_CODES | REFUSED_CODES
    # A worker lost while running it may have sent it; the caller's own exceptions and
    # chworkers' other errors (a pool that had no connection, a bad batch) were raised
    # before any request.
    return isinstance(error, WorkerLostError) or not isinstance(error, ChworkersError)


def error_kind(error: BaseException) -> str:
    """A short, low-cardinality label for ``error`` (metrics label ``kind``)."""
    from chworkers.errors import PoolError, ResponseTimeoutError

    if isinstance(error, ResponseTimeoutError):
        return "timeout"
    if isinstance(error, TransportError):
        return "transport"
    if isinstance(error, ServerError):
        return "server"
    if isinstance(error, PoolError):
        return "pool"
    if isinstance(error, ChworkersError):
        return "request"
    return "task"


@dataclass(frozen=True)
class Attempt:
    """One failed attempt in a policy's history."""

    error: BaseException
    kind: str
    code: int | None
    at: float
    backoff: float


@dataclass(frozen=True)
class RetryPolicy:
    """When and how to repeat a failed ClickHouse operation; an immutable value.

    ``max_attempts`` counts every attempt, the first included (1 disables retries).
    The n-th retry waits a random time in ``[0, min(max_backoff, initial_backoff *
    multiplier ** (n - 1))]`` ("full jitter"), never past ``deadline`` seconds after
    :meth:`new` started the operation's clock (or after the first failure; ``None``: no
    deadline).
    """

    max_attempts: int = setting(
        5, "Attempts in all, the first included (1: no retries).", minimum=1, reload=True
    )
    initial_backoff: float = setting(
        0.1, "Longest wait before the first retry.", unit="seconds", minimum=0, reload=True
    )
    max_backoff: float = setting(
        10.0, "Longest wait before any retry.", unit="seconds", minimum=0, reload=True
    )
    multiplier: float = setting(
        2.0, "Growth of the backoff ceiling per retry.", minimum=1, reload=True
    )
    deadline: float | None = setting(
        60.0,
        "Give up this long after the operation started (none: no deadline).",
        unit="seconds",
        minimum=0.001,
        reload=True,
    )
    retry_codes: frozenset[int] = setting(
        frozenset(RETRYABLE_CODES), "ClickHouse error codes that are retried.", reload=True
    )
    retry_statuses: frozenset[int] = setting(
        RETRYABLE_STATUSES, "HTTP statuses that are retried.", reload=True
    )
    #: State: the failed attempts so far and when the first one started (monotonic).
    history: tuple[Attempt, ...] = field(default=(), compare=False, repr=False)
    started_at: float | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        validate(self, source="retry")

    @classmethod
    def coerce(cls, value: RetryPolicy | Mapping[str, object] | None) -> RetryPolicy:
        """Build a policy from a policy, a mapping of its field names, or ``None`` (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, RetryPolicy):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"retry: expected a RetryPolicy or a mapping, got {type(value).__name__}",
                key="retry",
                value=value,
                expected="a RetryPolicy or a mapping of its fields",
            )
        return build(cls, value, prefix="retry.", source="retry")

    # -- state ------------------------------------------------------------------------

    @property
    def attempts(self) -> int:
        """Failed attempts recorded so far."""
        return len(self.history)

    @property
    def last_error(self) -> BaseException | None:
        return self.history[-1].error if self.history else None

    def new(self, now: float | None = None) -> RetryPolicy:
        """The same policy with an empty history, its deadline clock started at ``now``."""
        started = time.monotonic() if now is None else now
        return self._with_state((), started)

    # -- classification ---------------------------------------------------------------

    def classify(self, error: BaseException, *, idempotent: bool | None = None) -> Verdict:
        """Judge ``error``; ``idempotent`` overrides what the error says about its operation.

        Errors raised by :class:`~chworkers.clickhouse.connection.Connection` carry ``idempotent``
        (reads, and inserts with a deduplication token, are idempotent).
        """
        if idempotent is None:
            idempotent = bool(getattr(error, "idempotent", False))
        if isinstance(error, TransportError):
            if not error.sent or idempotent:
                return Verdict.RETRY
            return Verdict.UNSAFE
        if isinstance(error, ServerError):
            if is_too_many_partitions(error):
                return Verdict.FATAL  # TOO_MANY_PARTS's other meaning: the block, not the load
            if error.code is not None:
                transient = error.code in self.retry_codes
            else:
                transient = error.http_status in self.retry_statuses
            if not transient:
                return Verdict.FATAL
            if idempotent or (error.code is not None and error.code in NOT_APPLIED_CODES):
                return Verdict.RETRY
            return Verdict.UNSAFE
        return Verdict.FATAL

    def is_retryable(self, error: BaseException, *, idempotent: bool | None = None) -> bool:
        return self.classify(error, idempotent=idempotent) is Verdict.RETRY

    # -- the step -----------------------------------------------------------------------

    def increment(
        self,
        error: BaseException,
        *,
        idempotent: bool | None = None,
        now: float | None = None,
        rng: random.Random | None = None,
    ) -> RetryPolicy:
        """Record the failure ``error`` and return the next state.

        Raises ``error`` itself when it is not retryable (it fails at once), and
        :class:`~chworkers.errors.RetriesExhaustedError` (``last_error`` and ``__cause__``
        set to ``error``) when no attempt or no time is left. The returned policy's
        :meth:`sleep_time` is the wait before the next attempt.
        """
        now = time.monotonic() if now is None else now
        started = self.started_at if self.started_at is not None else now
        verdict = self.classify(error, idempotent=idempotent)
        if verdict is not Verdict.RETRY:
            raise error
        attempts = self.attempts + 1
        code = getattr(error, "code", None)
        backoff = (rng or _RNG).uniform(0.0, self.backoff_ceiling(attempts))
        if self.deadline is not None:
            remaining = started + self.deadline - now
            if remaining <= 0:
                raise self._exhausted(error, attempts, f"deadline of {self.deadline:g} s passed")
            backoff = min(backoff, remaining)
        if attempts >= self.max_attempts:
            raise self._exhausted(error, attempts, f"{attempts} attempt(s) failed")
        attempt = Attempt(
            error, error_kind(error), code if isinstance(code, int) else None, now, backoff
        )
        return self._with_state((*self.history, attempt), started)

    def _with_state(self, history: tuple[Attempt, ...], started_at: float) -> RetryPolicy:
        """This policy with another state. Its settings were checked when it was built:
        checking them again (``dataclasses.replace``) cost ~100 us, on every operation."""
        policy = copy.copy(self)
        object.__setattr__(policy, "history", history)
        object.__setattr__(policy, "started_at", started_at)
        return policy

    def backoff_ceiling(self, retry_number: int) -> float:
        """Upper bound of the jittered wait before retry number ``retry_number`` (from 1)."""
        return capped_backoff(self.initial_backoff, retry_number, self.max_backoff, self.multiplier)

    def sleep_time(self) -> float:
        """Seconds to wait before the next attempt (0 before any failure)."""
        return self.history[-1].backoff if self.history else 0.0

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left before the deadline (``None`` without one or before any failure)."""
        if self.deadline is None or self.started_at is None:
            return None
        return self.started_at + self.deadline - (time.monotonic() if now is None else now)

    def _exhausted(self, error: BaseException, attempts: int, why: str) -> RetriesExhaustedError:
        detail = f"{type(error).__name__}: {error}"
        exc = RetriesExhaustedError(
            f"giving up after {attempts} attempt(s) ({why}); last error: {detail}",
            attempts=attempts,
            last_error=error,
            maybe_applied=maybe_applied(error) or any(maybe_applied(a.error) for a in self.history),
        )
        exc.__cause__ = error
        return exc


_RNG = random.Random()
