"""systemd's service notification protocol, spoken directly (no libsystemd).

Under ``Type=notify`` systemd passes the service a datagram socket in ``NOTIFY_SOCKET``
(a filesystem path, or an abstract socket written with a leading ``@``) and reads
newline-separated ``KEY=VALUE`` assignments from it: ``READY=1`` once the daemon accepts
data, ``STATUS=`` free text for ``systemctl status``, ``WATCHDOG=1`` keep-alives when
``WatchdogSec=`` is set (systemd passes the timeout in ``WATCHDOG_USEC``),
``RELOADING=1`` and ``STOPPING=1`` around reloads and shutdown.

:class:`Notifier` sends those messages. Without ``NOTIFY_SOCKET`` every call is a
cheap no-op, so the daemon calls it unconditionally. Socket errors are logged and never
raised: a daemon must not die because its service manager went away.

:class:`Watchdog` pings at half of the watchdog timeout, but only while a health check
says the daemon is healthy (the supervisor's "my loop turned recently and my workers are
alive"). A stuck loop or sick workers thus stop the pings and systemd restarts the
service, which is the point of a watchdog: a thread that pinged unconditionally would
keep a wedged daemon alive forever. :class:`Heartbeat` is the usual building block of
such a health check.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from types import TracebackType

from chworkers.errors import ConfigError

log = logging.getLogger(__name__)

#: Environment variables systemd sets for a ``Type=notify`` service.
NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"

#: How long one send may block when systemd's receive queue is full.
SEND_TIMEOUT = 1.0

_KEY = re.compile(r"[A-Z][A-Z0-9_]*\Z")


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds, as systemd wants in ``MONOTONIC_USEC``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends notifications to systemd, or does nothing when not run by it.

    ``address`` is ``NOTIFY_SOCKET``'s value: an absolute path or ``@name`` for an
    abstract socket; ``None`` or ``""`` disables the notifier. ``watchdog_usec`` is
    ``WATCHDOG_USEC`` (``None`` when the watchdog is off). Every method returns whether
    the message was handed to the socket.

    Messages are only sent from the process that created the notifier: a forked worker
    inheriting it stays silent, since systemd (``NotifyAccess=main``) would reject it.
    """

    def __init__(self, address: str | None = None, *, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self._sockaddr: str | None = None
        if self.address is not None:
            if self.address.startswith("@"):
                self._sockaddr = "\0" + self.address[1:]
            elif self.address.startswith("/"):
                self._sockaddr = self.address
            else:
                log.warning(
                    "%s=%r is neither an absolute path nor an abstract '@' socket; "
                    "systemd notifications are disabled",
                    NOTIFY_SOCKET,
                    self.address,
                )
        if watchdog_usec is not None and watchdog_usec <= 0:
            watchdog_usec = None
        self.watchdog_usec = watchdog_usec
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """Build a notifier from systemd's variables in ``environ`` (``os.environ``).

        With ``unset`` (the default) the variables are removed afterwards, so worker
        processes and anything they start do not inherit them and try to notify.
        ``WATCHDOG_USEC`` only counts when ``WATCHDOG_PID`` is unset or names this
        process, as in ``sd_watchdog_enabled(3)``.
        """
        env = os.environ if environ is None else environ
        address = env.get(NOTIFY_SOCKET) or None
        watchdog_usec = _parse_watchdog(env)
        if unset:
            for name in (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID):
                env.pop(name, None)
        return cls(address, watchdog_usec=watchdog_usec)

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere."""
        return self._sockaddr is not None

    @property
    def watchdog_timeout(self) -> float | None:
        """systemd's watchdog timeout in seconds, ``None`` when it is off."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 1_000_000

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alives: half the timeout, as systemd recommends."""
        timeout = self.watchdog_timeout
        return None if timeout is None else timeout / 2

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram, in the order given.

        Keys are upper case (``READY``, ``STATUS``, ...); newlines in values are
        replaced by spaces because the protocol separates assignments with them.
        """
        lines = []
        for key, value in fields.items():
            if not _KEY.match(key):
                raise ConfigError(
                    f"not a systemd notification key: {key!r}",
                    key="notify",
                    value=key,
                    expected="upper case letters, digits and _ (READY, STATUS, ...)",
                )
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{key}={text}")
        return self._send("\n".join(lines).encode("utf-8", "replace"))

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is finished and the daemon accepts data."""
        return self.notify(READY=1, **_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload started; systemd waits for :meth:`ready` to finish it.

        ``MONOTONIC_USEC`` lets systemd >= 253 (``Type=notify-reload``) match the
        message with the reload it asked for; older versions ignore it.
        """
        return self.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec(), **_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown started (the daemon drains)."""
        return self.notify(STOPPING=1, **_status(status))

    def status(self, text: str) -> bool:
        """One line for ``systemctl status``: throughput, backlog, what it waits for."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """A keep-alive. Prefer :class:`Watchdog`, which sends it only when healthy."""
        return self.notify(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before a start, reload or stop times out."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(1, round(seconds * 1_000_000)))

    def close(self) -> None:
        """Close the socket; a later message opens a new one."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __repr__(self) -> str:
        if not self.enabled:
            return "<Notifier disabled>"
        watchdog = "off" if self.watchdog_timeout is None else f"{self.watchdog_timeout:g}s"
        return f"<Notifier {self.address} watchdog={watchdog}>"

    def _send(self, data: bytes) -> bool:
        if self._sockaddr is None:
            return False
        if os.getpid() != self._pid:
            log.debug("not notifying systemd from forked process %d", os.getpid())
            return False
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                    self._sock.settimeout(SEND_TIMEOUT)
                self._sock.sendto(data, self._sockaddr)
        except OSError as exc:
            # One warning per outage, not one per watchdog ping.
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "could not notify systemd at %s: %s", self.address, exc)
            self._failing = True
            self.close()
            return False
        if self._failing:
            log.info("notifying systemd at %s works again", self.address)
            self._failing = False
        return True


def _parse_watchdog(env: Mapping[str, str]) -> int | None:
    raw = env.get(WATCHDOG_USEC)
    if not raw:
        return None
    pid = env.get(WATCHDOG_PID)
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            log.warning("ignoring %s=%r: not a process id", WATCHDOG_PID, pid)
            return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a number of microseconds", WATCHDOG_USEC, raw)
        return None
    return usec if usec > 0 else None


def _status(status: str | None) -> dict[str, str]:
    return {} if status is None else {"STATUS": status}


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


def format_status(
    rows_per_second: float,
    queue_depth: int,
    *,
    queue_capacity: int | None = None,
    spool_batches: int | None = None,
    spool_bytes: int | None = None,
    prefix: str | None = None,
) -> str:
    """A ``STATUS=`` line such as ``12.3k rows/s, queue 4/1000, spool 3 batches (1.2 MiB)``."""
    parts = [f"{_si(rows_per_second)} rows/s"]
    parts.append(
        f"queue {queue_depth}"
        if queue_capacity is None
        else f"queue {queue_depth}/{queue_capacity}"
    )
    if spool_batches is not None:
        spool = f"spool {spool_batches} batch{'' if spool_batches == 1 else 'es'}"
        if spool_bytes is not None:
            spool += f" ({_iec(spool_bytes)})"
        parts.append(spool)
    text = ", ".join(parts)
    return f"{prefix}: {text}" if prefix else text


def _si(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}{suffix}"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def _iec(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
