"""A task submitted from a future's callback does not wait on a full queue.

Callbacks run on the supervisor's loop, and the loop is what takes tasks off the queue:
a submit there that found the queue full waited for room only the loop itself could make.
The loop stood still for the whole ``queue_timeout`` (for ever with the default, None):
no dispatch, no reaping, no stop. It is now answered at once with a QueueFullError that
says why.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from chworkers import QueueFullError, Supervisor

pytestmark = pytest.mark.timeout(120)


def test_a_full_queue_is_answered_at_once_on_the_loop() -> None:
    raised: list[BaseException] = []
    on_the_loop = threading.Event()

    with Supervisor(workers=1, queue_size=1, queue_timeout=20) as sup:

        def submit_more(_: Future[object]) -> None:
            if threading.current_thread() is threading.main_thread():
                return  # done before the callback was added: not on the loop
            try:
                for _ in range(3):  # the loop runs this callback: nothing leaves the queue
                    sup.call(time.sleep, 0)
            except BaseException as exc:
                raised.append(exc)
            on_the_loop.set()

        for _ in range(5):
            sup.call(time.sleep, 0.2).add_done_callback(submit_more)
            if on_the_loop.wait(60):
                break
        assert on_the_loop.is_set()
        assert sup.call(time.sleep, 0).result(60) is None  # the loop goes on
    assert len(raised) == 1
    assert isinstance(raised[0], QueueFullError), raised
    assert "cannot wait for room" in str(raised[0])
