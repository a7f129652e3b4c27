"""systemd's end of ``NOTIFY_SOCKET`` for tests: a real AF_UNIX datagram socket.

:class:`Receiver` reads what a :class:`~chworkers.ops.systemd.Notifier` sends, one
datagram at a time or collected with arrival times (conftest's ``receiver`` fixture binds
one); :class:`NotifySocket` is the socket a whole daemon is given, every message kept
with its arrival time and its sender's pid (tests of ``chworkers run`` under systemd,
the fault drills' readiness).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class Message:
    at: float  # time.monotonic() when it arrived
    pid: int  # the sender's (its credentials), -1 when it passed none
    fields: dict[str, str]


class NotifySocket:
    """``NOTIFY_SOCKET`` as systemd holds it: every message kept, with the sender's
    credentials, by a thread until :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._closing:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(65536, size)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", cdata[: struct.calcsize("3i")])[0]
            text = data.decode(errors="replace")
            fields = dict(line.partition("=")[::2] for line in text.split("\n"))
            with self._lock:
                self.messages.append(Message(time.monotonic(), pid, fields))

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def count(self, line: str) -> int:
        """Messages that carry ``line`` (``"READY=1"``)."""
        key, _, value = line.partition("=")
        return sum(m.fields.get(key) == value for m in self.snapshot())

    def wait_for(
        self,
        what: str,
        match: Callable[[Message], bool],
        timeout: float,
        alive: Callable[[], bool] = lambda: True,
    ) -> Message:
        """The first message ``match`` accepts; the test fails after ``timeout`` or when
        the daemon is no longer ``alive``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.snapshot():
                if match(message):
                    return message
            if not alive():
                pytest.fail(f"the daemon exited before {what}")
            time.sleep(0.05)
        pytest.fail(f"no {what} within {timeout} s; got {self.snapshot()}")

    def close(self) -> None:
        self._closing = True
        self._thread.join(2)
        self.sock.close()
