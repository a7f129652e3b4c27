"""systemd's end of ``NOTIFY_SOCKET`` for tests of the sd_notify protocol: a real
AF_UNIX datagram socket that receives what a :class:`~chworkers.ops.systemd.Notifier`
sends, with arrival times (conftest's ``receiver`` fixture binds one)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from chworkers.ops.systemd import Notifier


class Receiver:
    """What systemd's end of NOTIFY_SOCKET sees: datagrams, with arrival times."""

    def __init__(self, address: str) -> None:
        self.address = address  # as written in NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False

    def recv(self, timeout: float = 2.0) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096)

    def recv_fields(self, timeout: float = 2.0) -> dict[str, str]:
        return parse(self.recv(timeout))

    def assert_silent(self, timeout: float = 0.2) -> None:
        self.sock.settimeout(timeout)
        with pytest.raises(TimeoutError):
            data = self.sock.recv(4096)
            pytest.fail(f"unexpected notification {data!r}")

    def start_collecting(self) -> None:
        """Record every datagram with its arrival time, in a thread."""
        self.sock.settimeout(0.05)

        def run() -> None:
            while not self._closing:
                try:
                    data = self.sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                with self._lock:
                    self.received.append((time.monotonic(), data))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def pings_between(self, start: float, end: float) -> list[float]:
        with self._lock:
            return [t for t, data in self.received if data == b"WATCHDOG=1" and start <= t <= end]

    def close(self) -> None:
        self._closing = True
        if self._thread is not None:
            self._thread.join(2)
        self.sock.close()


def parse(data: bytes) -> dict[str, str]:
    fields = {}
    for line in data.decode().split("\n"):
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r} in {data!r}"
        fields[key] = value
    return fields


def notifier_for(receiver: Receiver, watchdog_usec: int | None = None) -> Notifier:
    env = {"NOTIFY_SOCKET": receiver.address}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return Notifier.from_environ(env)
