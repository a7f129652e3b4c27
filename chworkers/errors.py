"""chworkers' one error tree.

Everything chworkers raises derives from :class:`ChworkersError`. Driver and socket
exceptions (clickhouse-connect, urllib3, OSError) are translated into this tree once,
where ClickHouse is called, so retry logic and callers only ever see these types; the
original exception is kept in ``__cause__``.

Errors cross process boundaries (worker -> supervisor -> future), so every class is
picklable: constructors take the message as their only positional argument and the
context as keyword arguments, and :meth:`ChworkersError.__reduce__` rebuilds both.
"""

from __future__ import annotations

from typing import Any


class ChworkersError(Exception):
    """Root of every error chworkers raises."""

    def __init__(self, message: str = "", **context: Any) -> None:
        super().__init__(message)
        self.message = message
        for key, value in context.items():
            setattr(self, key, value)

    def _context(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "message" and not k.startswith("_")}

    def __reduce__(self) -> tuple[Any, ...]:
        # The __cause__ chain is not picklable in general; the context attributes
        # carry what a receiver needs (code, endpoint, last_error, ...).
        return (_rebuild, (type(self), self.message, self._context()))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[ChworkersError], message: str, context: dict[str, Any]) -> ChworkersError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.message = message
    err.__dict__.update(context)
    return err


class ConfigError(ChworkersError, ValueError):
    """A setting has a value chworkers cannot use.

    Attributes: ``key`` (the setting's name), ``value`` (what was given), ``expected``
    (what would have been accepted) and ``source`` (file, environment or flag).
    """

    key: str | None
    value: object
    expected: str | None
    source: str | None

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        value: object = None,
        expected: str | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(message, key=key, value=value, expected=expected, source=source)


class UnusablePathError(ConfigError):
    """A file or directory the daemon needs to start cannot be used by its user: its
    state directory, spool, positions or dead-letter folder, a TLS or credentials file
    its configuration names (missing, unreadable, not writable, a file where a folder
    belongs, a read-only file system). A configuration error like any other (``chworkers
    run`` exits 3, which systemd does not restart): starting again cannot fix it.

    Attributes: ``path`` (the file or directory at fault) besides ``key`` (the setting
    that leads there) and the rest of :class:`ConfigError`'s.
    """

    path: str

    def __init__(
        self,
        message: str,
        *,
        path: str,
        key: str | None = None,
        value: object = None,
        expected: str | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(message, key=key, value=value, expected=expected, source=source)
        self.path = path


class ClickHouseError(ChworkersError):
    """Talking to ClickHouse failed.

    Attributes: ``endpoint`` (``http://host:port``), ``query_id`` and ``query`` (first
    characters of the statement) where known.
    """

    endpoint: str | None
    query_id: str | None
    query: str | None

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        query_id: str | None = None,
        query: str | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, endpoint=endpoint, query_id=query_id, query=query, **context)


class ServerError(ClickHouseError):
    """ClickHouse answered with an exception.

    Attributes: ``code`` (ClickHouse's numeric error code, e.g. 60), ``name`` (its
    symbolic name, e.g. ``UNKNOWN_TABLE``) and ``http_status``.
    """

    code: int | None
    name: str | None
    http_status: int | None

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        name: str | None = None,
        http_status: int | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, code=code, name=name, http_status=http_status, **context)


class TransportError(ClickHouseError):
    """The request did not complete at the network level.

    ``sent`` tells whether the request may have reached the server: ``False`` means it
    certainly was not applied (always safe to retry), ``True`` means it may have been
    applied (retry an insert only when it carries a deduplication token).
    """

    sent: bool

    def __init__(self, message: str, *, sent: bool = True, **context: Any) -> None:
        super().__init__(message, sent=sent, **context)


class ConnectError(TransportError):
    """The connection could not be opened: the request was never sent."""

    def __init__(self, message: str, **context: Any) -> None:
        context["sent"] = False
        super().__init__(message, **context)


class ResponseTimeoutError(TransportError):
    """No (complete) response within the timeout after the request was sent."""


class ConnectionLostError(TransportError):
    """The connection was reset or closed after the request was sent."""


class RequestError(ClickHouseError):
    """The driver refused a request before sending it, or could not decode its answer.

    Typically data that does not fit the table (a string for an ``Int32`` column, a row
    with too few values) or an unsupported argument. Retrying cannot help.
    """


class PoolError(ChworkersError):
    """The connection pool cannot hand out a connection."""


class PoolTimeoutError(PoolError):
    """No connection became free within ``acquire_timeout``."""


class PoolClosedError(PoolError):
    """The pool was closed; no new connections are handed out."""


class RetriesExhaustedError(ChworkersError):
    """An operation failed on every attempt the retry policy allowed.

    Attributes: ``attempts``, ``last_error`` (also the ``__cause__``) and
    ``maybe_applied``: whether any of the attempts may have reached ClickHouse and been
    applied (a write sent again is then a replay that ClickHouse may drop by its
    deduplication token).
    """

    attempts: int
    last_error: BaseException | None
    maybe_applied: bool

    def __init__(
        self,
        message: str,
        *,
        attempts: int = 0,
        last_error: BaseException | None = None,
        maybe_applied: bool = True,
    ) -> None:
        super().__init__(
            message, attempts=attempts, last_error=last_error, maybe_applied=maybe_applied
        )


class EmbeddedError(ChworkersError):
    """The embedded ClickHouse endpoint could not start or stopped unexpectedly."""


class StatePathError(ChworkersError):
    """A file or directory the daemon needs to start failed for a reason that may pass
    by itself: the disk or the user's quota full, an I/O error, a network file system
    not answering (``path`` names it). Not a configuration error: ``chworkers run`` exits
    1, which systemd restarts, so the daemon comes back once it passes (a permanent
    reason is an :class:`UnusablePathError`, exit 3)."""

    path: str


class StateDirInUseError(ChworkersError):
    """Another process (``holder`` says which) holds the daemon's state directory."""

    holder: str


class WaitTimeoutError(ChworkersError, TimeoutError):
    """A wait with a time limit ran out (``timeout`` says how long it was) before what it
    waited for happened; that may still happen later. Also a builtin
    :class:`TimeoutError`, so ``except TimeoutError`` catches it."""

    timeout: float | None


class QueueFullError(ChworkersError):
    """The task queue stayed full for the whole timeout."""


class TaskError(ChworkersError):
    """A task raised in a worker; ``error_type`` and ``traceback`` describe it."""


class SpoolError(ChworkersError):
    """The on-disk spool cannot take or give back a batch."""


class SpoolFullError(SpoolError):
    """The spool is at its size cap (``used`` and ``max_bytes`` say how full)."""


class SpoolCorruptError(SpoolError):
    """A spool file is truncated or fails its checksum (``path`` names it)."""


class SpoolWriteError(SpoolError):
    """Writing a batch to the spool failed (disk full, I/O error); nothing of it was kept.

    Attributes: ``path`` (the file or directory) and ``errno`` (e.g. ``errno.ENOSPC``).
    """


class SpoolTimeoutError(SpoolError):
    """Records were not spooled within the caller's time limit and were withdrawn: they
    will never be spooled (an HTTP client is answered 503 and may send them again)."""


class BatcherClosedError(ChworkersError):
    """The batcher is closed (the daemon is stopping): records were not accepted, or were
    not spooled before it gave up on a full or failing spool."""


class BrokerError(ChworkersError):
    """A message broker (Redis, NATS) did not answer or refused a request; ``broker``
    names it (its URL without credentials) and ``__cause__`` is the client's error."""


class PoisonMessageError(ChworkersError):
    """A broker message that can never be inserted (no payload field, a record too
    large, an unfinished record, delivered too often); it is dead-lettered with this
    error and acknowledged. ``message_id``: the message's id in its stream, once its
    source dead-letters it (its dead letter is written once by it, across restarts)."""

    message_id: str = ""


class ColumnarFileError(ChworkersError, ValueError):
    """A Parquet, Arrow or Native file (or some of its rows) that cannot be read as its
    format says: corrupt, truncated, of another format. The daemon dead-letters it with
    this error and goes on. Attributes: ``path`` (when known) and ``rows`` (the file's
    rows at fault, ``"first-end"``, or ``"all"``)."""

    path: str = ""
    rows: str = "all"


class SerializationError(ChworkersError):
    """A task, its batch, arguments or result cannot cross the process boundary.

    Attributes: ``what`` (``"batch"``, ``"task"``, ``"result"`` or ``"error"``) and
    ``error_type`` (the pickler's exception type).
    """


class WorkerBootError(ChworkersError):
    """Worker processes die while starting, so the supervisor stops instead of crash-looping.

    Attributes: ``failures`` (consecutive boot failures) and ``last_error`` (what the last
    worker reported, as text, when it could report anything).
    """


class WorkerLostError(ChworkersError):
    """The worker running a task died or hung too often while running it.

    Attributes: ``task_id``, ``attempts`` and ``reason`` (``"crashed"`` or ``"hung"``).
    """


class ShardInsertError(ChworkersError):
    """An insert routed by a sharding key failed on one or more shards; the other shards'
    parts were inserted (each part is confirmed by its own shard).

    Attributes: ``table``, ``failed`` (the indexes of the shards whose part failed),
    ``written`` (rows the other shards confirmed) and ``errors`` (each failed shard's
    error, as text); the first failed shard's error is the ``__cause__``. Inserting the
    same batch again (same rows, or the same token) inserts only what is missing: each
    part's token is derived from the batch's, with its shard in it.
    """


class SupervisorStoppedError(ChworkersError):
    """The supervisor is stopped (or stopping) and accepts no new tasks; also the error of
    queued tasks that were not run before a stop."""


class BatchError(ChworkersError, ValueError):
    """A batch handed to ``insert`` is malformed; nothing of it was queued.

    Attributes: ``table``, ``row`` (index of the offending row, when one is to blame) and
    ``reason``.
    """


class RecordKeyError(ChworkersError, ValueError):
    """A record whose sharding-key fields cannot be read as ClickHouse would store them
    (not a number, NULL, malformed); the daemon dead-letters it instead of guessing its
    shard. Attribute: ``field`` (the key field at fault, "" when the record is)."""


class HttpRequestError(ChworkersError):
    """One of chworkers' HTTP endpoints cannot serve a request as it was sent.

    Attributes: ``status`` (the HTTP status to answer: 400 for broken framing, 408 for a
    client too slow, 413 for a body over the limit, 503 when busy) and ``headers`` (to
    send with it, e.g. ``Retry-After``).
    """

    status: int
    headers: dict[str, str]

    def __init__(
        self, message: str, *, status: int = 400, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, status=int(status), headers=dict(headers or {}))


class BenchError(ChworkersError):
    """``chworkers bench`` cannot measure a comparison: a path failed, gave a wrong count,
    or the server's database is not the benchmark's to use."""
