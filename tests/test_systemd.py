"""The sd_notify protocol against a real AF_UNIX datagram socket (:class:`Notifier`;
the watchdog: test_watchdog.py; the STATUS= line: test_statusline.py)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sdnotify import Receiver, notifier_for

from chworkers.ops import systemd
from chworkers.ops.systemd import Notifier
from chworkers.ops.watchdog import Watchdog

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    r = Receiver(f"@chworkers-test/{uuid.uuid4().hex}")
    yield r
    r.close()


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
