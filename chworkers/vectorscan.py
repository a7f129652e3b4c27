"""Counting a byte in a buffer at vector speed, once numpy is loaded in the background.

``bytes.count(b"\\n")`` runs a byte at a time (a loop with an early exit that the
compiler cannot vectorize): 4-5 ms for a 100,000-line batch of 6.4 MB on the 2-core
development machine, paid by the daemon's file source for every batch it frames
(counting the records of each read, the empty lines among them, and again where a read
fills a batch). numpy's comparison and ``count_nonzero`` do the same in a tenth of that.

numpy costs a process about 0.15 s of CPU and 15 MB to import, which the daemon must not
pay before it is ready (issue 11's 0.5 s): :func:`load_in_background` imports it on a
thread of its own, which the daemon starts once it is ready. Until that import is done,
and in a process that never starts it, :func:`counts` and :func:`nth` answer None and the
caller counts with ``bytes.count`` as before; they never import numpy themselves (nor
use a numpy half imported by another thread). The answers are the same either way.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType
from typing import Any

__all__ = ["MIN_BYTES", "counts", "load_in_background", "loaded", "module", "nth"]

log = logging.getLogger(__name__)

#: Ranges shorter than this are left to ``bytes.count``: numpy's calls cost a few
#: microseconds each, which ``bytes.count`` spends on ~10 KB.
MIN_BYTES = 64 * 1024

_numpy: ModuleType | None = None
_lock = threading.Lock()
_loader: threading.Thread | None = None


def load_in_background() -> None:
    """Import numpy on a thread of its own (once per process; a no-op once loaded);
    :func:`counts` and :func:`nth` use it as soon as the import is done."""
    global _loader
    with _lock:
        if _numpy is not None or _loader is not None:
            return
        _loader = threading.Thread(target=_load, name="chworkers-numpy-load", daemon=True)
    _loader.start()


def _load() -> None:
    global _numpy
    try:
        import numpy
    except Exception as exc:  # a broken install: counting goes on with bytes.count
        log.warning("cannot import numpy (bytes are counted without it): %s", exc)
        return
    _numpy = numpy


def loaded() -> bool:
    """Whether numpy is loaded here, and the counts use it."""
    return _numpy is not None


def module() -> ModuleType | None:
    """numpy, once :func:`load_in_background` has imported it (None until then)."""
    return _numpy


def _view(data: bytes | memoryview, start: int, end: int) -> Any | None:
    np = _numpy
    if np is None or end - start < MIN_BYTES:
        return None
    return np.frombuffer(data, np.uint8)[start:end]


def counts(data: bytes | memoryview, byte: int, start: int, end: int) -> tuple[int, int] | None:
    """``(occurrences, repeats)`` of ``byte`` in ``data[start:end]``: how many times it
    is there, and how many of those follow another right before them (within the
    range: a run of k counts k - 1). None when numpy is not loaded (yet) or the range is
    short: the caller counts with ``bytes.count``."""
    view = _view(data, start, end)
    if view is None:
        return None
    np = _numpy
    assert np is not None
    # Where it is, then which of those follow one another: on the few positions, not
    # a second pass over the bytes (an AND of two shifted views cost 3x as much).
    at = np.flatnonzero(view == byte)
    return len(at), int(np.count_nonzero(np.diff(at) == 1))


def nth(
    data: bytes | memoryview, byte: int, n: int, start: int, end: int
) -> tuple[int, int] | None:
    """Just past the ``n``-th (``n`` >= 1) occurrence of ``byte`` in ``data[start:end]``
    and ``n``; ``(end, k)`` when there are only k <= ``n`` of them. None when numpy is
    not loaded (yet) or the range is short."""
    view = None if n < 1 else _view(data, start, end)
    if view is None:
        return None
    np = _numpy
    assert np is not None
    at = np.flatnonzero(view == byte)
    if len(at) <= n:
        return end, len(at)
    return start + int(at[n - 1]) + 1, n
