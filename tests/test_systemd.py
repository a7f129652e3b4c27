"""The sd_notify protocol against a real AF_UNIX datagram socket."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chworkers.ops import systemd
from chworkers.ops.statusline import format_status
from chworkers.ops.systemd import Notifier
from chworkers.ops.watchdog import Heartbeat, Watchdog

pytestmark = pytest.mark.timeout(30)


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


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(str(tmp_path / "notify.sock"))
    yield r
    r.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    r = Receiver(f"@chworkers-test/{uuid.uuid4().hex}")
    yield r
    r.close()


def notifier_for(receiver: Receiver, watchdog_usec: int | None = None) -> Notifier:
    env = {"NOTIFY_SOCKET": receiver.address}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return Notifier.from_environ(env)


# --- messages -----------------------------------------------------------------


def test_without_notify_socket_everything_is_a_quiet_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready("up")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert repr(notifier) == "<Notifier disabled>"
    watchdog = Watchdog(notifier, lambda: True)
    watchdog.start()
    assert not watchdog.running


def test_ready_status_stopping_on_a_filesystem_socket(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    assert notifier.enabled
    assert notifier.ready("accepting data")
    assert receiver.recv() == b"READY=1\nSTATUS=accepting data"
    assert notifier.status("1.2k rows/s, queue 3/100")
    assert receiver.recv() == b"STATUS=1.2k rows/s, queue 3/100"
    assert notifier.stopping("draining")
    assert receiver.recv() == b"STOPPING=1\nSTATUS=draining"
    assert notifier.ready()
    assert receiver.recv() == b"READY=1"
    notifier.close()


def test_abstract_socket(abstract_receiver: Receiver) -> None:
    notifier = notifier_for(abstract_receiver)
    assert notifier.ready()
    assert abstract_receiver.recv() == b"READY=1"
    assert notifier.watchdog()
    assert abstract_receiver.recv() == b"WATCHDOG=1"


def test_reloading_carries_the_monotonic_clock(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading("reloading configuration")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = receiver.recv_fields()
    assert list(fields) == ["RELOADING", "MONOTONIC_USEC", "STATUS"]
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    assert fields["STATUS"] == "reloading configuration"


def test_extend_timeout_and_generic_fields(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    assert notifier.extend_timeout(12.5)
    assert receiver.recv() == b"EXTEND_TIMEOUT_USEC=12500000"
    assert notifier.notify(STATUS="two\nlines\r", ERRNO=5)
    # Newlines would split the assignment; they become spaces.
    assert receiver.recv() == b"STATUS=two lines \nERRNO=5"
    with pytest.raises(ValueError, match="not a systemd notification key"):
        notifier.notify(**{"status": "lower case"})


def test_the_reference_client_speaks_the_same_format(receiver: Receiver) -> None:
    """systemd's own systemd-notify and Notifier produce the same assignments."""
    tool = shutil.which("systemd-notify")
    if tool is None:
        pytest.skip("systemd-notify is not installed")
    subprocess.run(
        [tool, "--no-block", "--ready", "--status=hello"],
        env={**os.environ, "NOTIFY_SOCKET": receiver.address},
        check=True,
        timeout=10,
    )
    theirs = receiver.recv_fields()
    notifier_for(receiver).ready("hello")
    ours = receiver.recv_fields()
    assert {k: theirs[k] for k in ours} == ours


def test_from_environ_unsets_the_variables_for_children(receiver: Receiver) -> None:
    env = {"NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": "30000000", "PATH": "/bin"}
    notifier = Notifier.from_environ(env)
    assert env == {"PATH": "/bin"}
    assert notifier.watchdog_timeout == 30.0
    assert notifier.watchdog_interval == 15.0
    kept = {"NOTIFY_SOCKET": receiver.address}
    Notifier.from_environ(kept, unset=False)
    assert kept == {"NOTIFY_SOCKET": receiver.address}


@pytest.mark.parametrize(
    ("extra", "interval"),
    [
        ({"WATCHDOG_USEC": "4000000"}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_settings(
    receiver: Receiver, extra: dict[str, str], interval: float | None
) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": receiver.address, **extra})
    assert notifier.watchdog_interval == interval


def test_relative_address_disables_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chworkers.ops.systemd"):
        notifier = Notifier("relative/path.sock")
    assert not notifier.enabled
    assert not notifier.ready()
    assert "neither an absolute path" in caplog.text


def test_socket_errors_are_logged_once_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "later.sock"
    notifier = Notifier(str(path))
    with caplog.at_level(logging.DEBUG, logger="chworkers.ops.systemd"):
        assert not notifier.ready()  # nobody listens yet: ENOENT
        assert not notifier.watchdog()
        assert not notifier.watchdog()
    warnings = [
        r
        for r in caplog.records
        if r.name == "chworkers.ops.systemd" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1, caplog.text
    assert "could not notify systemd" in warnings[0].getMessage()

    caplog.clear()
    late = Receiver(str(path))  # systemd came back
    try:
        with caplog.at_level(logging.INFO, logger="chworkers.ops.systemd"):
            assert notifier.watchdog()
        assert late.recv() == b"WATCHDOG=1"
        assert "works again" in caplog.text
    finally:
        late.close()


def test_a_full_receive_queue_costs_at_most_the_send_timeout(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(systemd, "SEND_TIMEOUT", 0.1)
    notifier = notifier_for(receiver)
    started = time.monotonic()
    for _ in range(100_000):  # nobody reads: the queue fills up, then sends time out
        if not notifier.status("x" * 1000):
            break
    else:
        pytest.fail("the receive queue never filled up")
    assert time.monotonic() - started < 10
    slow = time.monotonic()
    assert not notifier.watchdog()
    assert time.monotonic() - slow < 1.0


def test_a_forked_child_does_not_notify(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if Notifier refused to send
        os._exit(1 if notifier.ready("from the child") else 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    receiver.assert_silent()
    assert notifier.ready("from the parent")
    assert receiver.recv() == b"READY=1\nSTATUS=from the parent"


# --- watchdog -------------------------------------------------------------------

TIMEOUT_USEC = 400_000  # WatchdogSec=0.4s: pings every 0.2 s


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Polls ``condition``; for outcomes a loaded machine may only delay."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_watchdog_pings_at_half_the_timeout(receiver: Receiver) -> None:
    notifier = notifier_for(receiver, 1_000_000)  # WatchdogSec=1s
    receiver.start_collecting()
    with Watchdog(notifier, lambda: True) as watchdog:
        assert watchdog.running
        assert watchdog.interval == pytest.approx(0.5)
        start = time.monotonic()
        time.sleep(2.2)
    pings = receiver.pings_between(start - 1, start + 10)
    # One at start, then one every 0.5 s: 5 in 2.2 s (a loaded machine may lose one).
    assert 4 <= len(pings) <= 6, pings
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert 0.4 <= statistics.median(gaps) <= 0.6, gaps
    # Never so late that systemd's 1 s timeout fires, never bunched up.
    assert all(0.25 < gap < 0.95 for gap in gaps), gaps
    assert not watchdog.running
    assert watchdog.pings == len(pings)


def test_no_pings_while_the_health_check_fails(receiver: Receiver) -> None:
    notifier = notifier_for(receiver, TIMEOUT_USEC)
    healthy = threading.Event()
    receiver.start_collecting()
    with Watchdog(notifier, healthy.is_set) as watchdog:
        time.sleep(0.7)
        assert receiver.pings_between(0, time.monotonic()) == []
        assert watchdog.withheld >= 3
        healthy.set()
        resumed = time.monotonic()
        assert eventually(lambda: len(receiver.pings_between(resumed, resumed + 60)) >= 2)


def test_no_pings_while_the_loop_is_stuck(receiver: Receiver) -> None:
    """The supervisor's loop beats a Heartbeat; when it hangs, systemd gets no pings."""
    notifier = notifier_for(receiver, TIMEOUT_USEC)
    heartbeat = Heartbeat()
    unstick = threading.Event()
    stuck = threading.Event()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            heartbeat.beat()
            if stuck.is_set():
                unstick.wait()  # a blocking call that never returns, until the test says so
                stuck.clear()
            time.sleep(0.02)

    loop_thread = threading.Thread(target=loop, daemon=True)
    loop_thread.start()
    receiver.start_collecting()
    max_age = 0.2  # the health check: "the loop turned in the last 0.2 s"
    try:
        with Watchdog(notifier, lambda: heartbeat.fresh(max_age)):
            assert eventually(lambda: len(receiver.pings_between(0, time.monotonic())) >= 2)
            stuck.set()
            time.sleep(0.1)
            last_beat = time.monotonic() - heartbeat.age()
            time.sleep(1.5)
            # Once the heartbeat is stale (plus slack for a ping already on its way):
            # silence, so systemd's timeout fires and it restarts the service.
            quiet_from = last_beat + max_age + 0.25
            assert receiver.pings_between(quiet_from, time.monotonic()) == []
            assert heartbeat.age() > 1.0
            unstick.set()
            resumed = time.monotonic()
            assert eventually(lambda: len(receiver.pings_between(resumed, resumed + 60)) >= 2)
    finally:
        unstick.set()
        stop.set()
        loop_thread.join(2)


def test_a_raising_health_check_counts_as_unhealthy(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = notifier_for(receiver, TIMEOUT_USEC)
    calls = 0

    def check() -> bool:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("workers table locked")
        return True

    watchdog = Watchdog(notifier, check, interval=60)
    with caplog.at_level(logging.INFO, logger="chworkers.ops.systemd"):
        assert not watchdog.ping_if_healthy()
        assert not watchdog.ping_if_healthy()
        assert watchdog.ping_if_healthy()
    assert receiver.recv() == b"WATCHDOG=1"
    receiver.assert_silent(0.05)
    assert "health check raised RuntimeError: workers table locked" in caplog.text
    assert caplog.text.count("withholding") == 1  # logged on the transition only
    assert "healthy again" in caplog.text


def test_watchdog_survives_a_vanished_socket(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"), watchdog_usec=100_000)
    with Watchdog(notifier, lambda: True) as watchdog:
        time.sleep(0.3)
        assert watchdog.running
    assert watchdog.pings == 0
    assert "0 pings" in repr(watchdog)


def test_watchdog_rejects_a_nonsense_interval(receiver: Receiver) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Watchdog(notifier_for(receiver), lambda: True, interval=0)


def test_heartbeat_with_a_fake_clock() -> None:
    now = [100.0]
    heartbeat = Heartbeat(clock=lambda: now[0])
    now[0] = 103.0
    assert heartbeat.age() == 3.0
    assert not heartbeat.fresh(2.0)
    heartbeat.beat()
    assert heartbeat.fresh(0.0)


def test_format_status() -> None:
    assert format_status(12_345.6, 4, queue_capacity=1000) == "12.3k rows/s, queue 4/1000"
    assert (
        format_status(0, 0, spool_batches=3, spool_bytes=1_300_000, prefix="waiting for ClickHouse")
        == "waiting for ClickHouse: 0 rows/s, queue 0, spool 3 batches (1.2 MiB)"
    )
    assert format_status(2.5, 1, spool_batches=1, spool_bytes=512) == (
        "2.5 rows/s, queue 1, spool 1 batch (512 B)"
    )
    assert format_status(3.2e6, 0) == "3.2M rows/s, queue 0"
