"""Signal handlers that only enqueue.

The supervisor's loop acts on signals; the handlers only append the signal number to the
loop's command queue and wake it (gunicorn's arbiter does the same). Installing handlers
is only possible on the main thread, so a supervisor that owns the process's signals must
be started there.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from chworkers.errors import ConfigError

log = logging.getLogger(__name__)

#: The signals a supervisor that owns its process handles: SIGTERM and SIGINT stop,
#: SIGHUP reloads, SIGUSR2 restarts the workers one at a time.
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)


class SignalInbox:
    """Installs handlers that pass signal numbers to ``notify``; restores the old ones."""

    def __init__(self, notify: Callable[[int], object]) -> None:
        self._notify = notify
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise ConfigError(
                "handle_signals=True needs the supervisor to start on the main thread",
                key="handle_signals",
                value=True,
                expected="start() called from the main thread, or handle_signals=False",
            )
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._notify(signum)

    def restore(self) -> None:
        if not self._previous or threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


@contextlib.contextmanager
def blocked(signums: tuple[int, ...]) -> Iterator[None]:
    """Block ``signums`` in the calling thread meanwhile (a signal sent to the process
    goes to another thread or waits; it is not lost). A process started meanwhile
    inherits the mask: workers and the fork server start with :data:`HANDLED` blocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
