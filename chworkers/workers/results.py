"""Results and errors as bytes, from a worker back to the supervisor.

A task's return value crosses pickled (:mod:`chworkers.workers.pickling`, in band: results
are small); an error a task raised becomes one of chworkers' own
(:class:`~chworkers.errors.TaskError` when it was not), with the original as its
``__cause__`` when that pickles.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

from chworkers.errors import ChworkersError, SerializationError, TaskError
from chworkers.workers import pickling


def encode_result(value: Any) -> bytes:
    if value is None:
        return b""
    try:
        data, buffers = pickling.dumps(value, what="result")
    except SerializationError as exc:
        return encode_error(exc)
    if buffers:  # results are small; keep them in band
        data = bytes([pickling.PICKLE]) + pickle.dumps(value, protocol=5)
    return data


def decode_result(data: bytes) -> Any:
    return pickling.loads(data) if data else None


def as_task_error(exc: BaseException) -> ChworkersError:
    """What a future resolves to when a task raised ``exc`` in a worker."""
    if isinstance(exc, ChworkersError):
        return exc
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    err = TaskError(
        f"{type(exc).__name__}: {exc}",
        error_type=kind,
        traceback="".join(traceback.format_exception(exc)),
    )
    err.__cause__ = exc
    return err


def encode_error(exc: BaseException) -> bytes:
    """Pickle the error a task raised; the original rides along as ``__cause__`` when it can."""
    err = as_task_error(exc)
    cause = err.__cause__ if err is not exc else None
    try:
        return pickle.dumps((err, cause), protocol=5)
    except Exception:
        try:
            return pickle.dumps((err, None), protocol=5)
        except Exception as inner:  # an error whose context attributes do not pickle
            plain = TaskError(str(err), error_type=type(err).__name__, traceback=repr(inner))
            return pickle.dumps((plain, None), protocol=5)


def decode_error(data: bytes) -> BaseException:
    err, cause = pickle.loads(data)
    if cause is not None:
        err.__cause__ = cause
    return err  # type: ignore[no-any-return]
