"""A supervisor whose start() failed can still be stopped.

start() failing after the loop was set up (here: the metrics port is taken) left a
loop that never ran; stop() then queued a command for it and waited forever for it to
finish. Now stop() sees that nothing runs and returns at once.
"""

from __future__ import annotations

import socket
import threading

import pytest

from chworkers import Supervisor
from chworkers.errors import ConfigError


def test_stop_after_a_failed_start_returns() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        sup = Supervisor(workers=1, metrics_port=busy.getsockname()[1])
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            sup.start()
    stopper = threading.Thread(target=sup.stop, daemon=True)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive(), "stop() after a failed start() never returned"
    assert sup.state == "failed"
    assert sup.wait(0) is True
