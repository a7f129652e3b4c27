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

The watchdog that pings only while the daemon is healthy is
:mod:`chworkers.ops.watchdog`'s; the ``STATUS=`` line is :mod:`chworkers.ops.statusline`'s.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Mapping, MutableMapping

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
