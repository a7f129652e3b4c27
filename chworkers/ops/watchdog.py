"""systemd's watchdog, fed only while the daemon is healthy.

:class:`Watchdog` pings at half of the watchdog timeout (through a
:class:`~chworkers.ops.systemd.Notifier`), but only while a health check says the
daemon is healthy (the supervisor's "my loop turned recently and my workers are
alive"). A stuck loop or sick workers thus stop the pings and systemd restarts the
service, which is the point of a watchdog: a thread that pinged unconditionally would
keep a wedged daemon alive forever. :class:`Heartbeat` is the usual building block of
such a health check.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from types import TracebackType

from chworkers.errors import ConfigError
from chworkers.ops.systemd import Notifier

#: systemd's logger, as before the watchdog had its own module (log filters keep working).
log = logging.getLogger("chworkers.ops.systemd")


class Heartbeat:
    """Proof of life for a loop: it calls :meth:`beat` every turn.

    A health check then asks :meth:`fresh`: a loop stuck in a blocking call or a
    deadlock stops beating, and the check fails.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    def age(self) -> float:
        """Seconds since the last beat."""
        return self._clock() - self._last

    def fresh(self, max_age: float) -> bool:
        return self.age() <= max_age


class Watchdog:
    """Pings systemd's watchdog while ``health_check()`` returns True.

    A thread runs the check every ``interval`` seconds (default: the notifier's
    :attr:`~Notifier.watchdog_interval`, half of ``WatchdogSec``) and sends
    ``WATCHDOG=1`` only if it passes. A check that raises counts as failed; one that
    hangs stops the pings too, which is what should happen to a hung daemon. Without
    systemd's watchdog (or ``NOTIFY_SOCKET``) :meth:`start` does nothing.
    """

    def __init__(
        self,
        notifier: Notifier,
        health_check: Callable[[], bool],
        *,
        interval: float | None = None,
    ) -> None:
        if interval is not None and not (interval > 0 and math.isfinite(interval)):
            raise ConfigError(
                f"watchdog interval must be positive and finite, got {interval!r}",
                key="interval",
                value=interval,
                expected="seconds > 0, or None for half of WatchdogSec",
            )
        self.notifier = notifier
        self.health_check = health_check
        self.interval = interval if interval is not None else notifier.watchdog_interval
        self.pings = 0
        self.withheld = 0
        self._healthy = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled and self.interval is not None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def ping_if_healthy(self) -> bool:
        """Run the health check once and ping if it passes; returns whether it pinged."""
        try:
            healthy = bool(self.health_check())
            reason = "health check failed"
        except Exception as exc:
            healthy = False
            reason = f"health check raised {type(exc).__name__}: {exc}"
        if healthy != self._healthy:
            if healthy:
                log.info("daemon healthy again; resuming systemd watchdog pings")
            else:
                log.warning("%s; withholding systemd watchdog pings", reason)
            self._healthy = healthy
        if not healthy:
            self.withheld += 1
            return False
        sent = self.notifier.watchdog()
        if sent:
            self.pings += 1
        return sent

    def start(self) -> None:
        """Start pinging in a daemon thread (idempotent; no-op when disabled)."""
        if not self.enabled or self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="chworkers-watchdog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop pinging; waits up to ``timeout`` for a health check in progress."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> Watchdog:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        every = "off" if self.interval is None else f"every {self.interval:g}s"
        return f"<Watchdog {state} {every}, {self.pings} pings, {self.withheld} withheld>"

    def _run(self) -> None:
        assert self.interval is not None
        deadline = time.monotonic()
        while True:
            self.ping_if_healthy()
            # Schedule from the previous deadline, so a slow check does not drift the
            # rhythm; after a very slow one, start afresh instead of bursting.
            deadline += self.interval
            now = time.monotonic()
            if deadline < now:
                deadline = now
            if self._stop.wait(deadline - now):
                return
