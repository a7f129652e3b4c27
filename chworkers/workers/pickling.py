"""How task data crosses to a worker: pickle protocol 5, dill for what pickle cannot.

Batches of rows are pickled with protocol 5 (the stdlib C pickler); columnar batches
(numpy arrays, pandas, Arrow) keep their buffers out of band so they cross the pipe
without being copied into the pickle. ``benchmarks/bench_supervisor.py`` measures this
against Arrow IPC, ClickHouse Native and dill: dill is ~15x slower than pickle for rows
and only functions need it.

Functions are pickled by reference when they can be (module-level functions); lambdas
and closures fall back to dill, which pickles them by value, which is why tasks may be
closures. The first byte of what :func:`dumps` returns says which pickler wrote it.
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Sequence
from typing import Any

import dill  # type: ignore[import-untyped]

from chworkers.errors import SerializationError

PICKLE = 0
DILL = 1


def dumps(obj: Any, *, what: str) -> tuple[bytes, list[bytes]]:
    """Pickle ``obj`` (protocol 5, buffers out of band), falling back to dill."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = bytes([PICKLE]) + pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    except (pickle.PicklingError, AttributeError, TypeError):
        buffers.clear()
        try:
            data = bytes([DILL]) + dill.dumps(obj, protocol=5, buffer_callback=buffers.append)
        except Exception as exc:
            raise SerializationError(
                f"cannot serialize the {what} for a worker process: {type(exc).__name__}: {exc}",
                what=what,
                error_type=type(exc).__name__,
            ) from exc
    # Copy the out-of-band buffers now (the caller may reuse its arrays once we return),
    # except bytes, which nobody can change.
    return data, [_frozen(b.raw()) for b in buffers]


def _frozen(view: memoryview) -> bytes:
    return view.obj if type(view.obj) is bytes and view.nbytes == len(view.obj) else view.tobytes()


def loads(data: bytes | memoryview, buffers: Sequence[Any] = ()) -> Any:
    view = memoryview(data)
    if view[0] == DILL:
        unpickler = dill.Unpickler(io.BytesIO(view[1:]), buffers=buffers)
        # dill pickles the globals of a function from the main script by reference, to
        # "the __main__ module", which it looks up in the module it found as __main__
        # when it was imported. A worker imports dill (in the fork server) before it
        # imports the program's main module again, so that was the fork server's, and a
        # lambda using a global of the script (a constant, a function) failed with
        # NameError. The main module as it is now is the script's.
        unpickler._main = sys.modules.get("__main__", unpickler._main)
        return unpickler.load()
    return pickle.loads(view[1:], buffers=buffers)
