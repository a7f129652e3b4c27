"""systemd's watchdog fed only while healthy (:class:`Watchdog`, :class:`Heartbeat`),
against a real NOTIFY_SOCKET receiver."""

from __future__ import annotations

import itertools
import logging
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sdnotify import Receiver, notifier_for

from chworkers.ops.systemd import Notifier
from chworkers.ops.watchdog import Heartbeat, Watchdog

pytestmark = pytest.mark.timeout(30)


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
