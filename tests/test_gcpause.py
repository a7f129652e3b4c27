"""chworkers/gcpause.py: containers made and freed during a pause are never collected,
and the collector is on again after the last pause, as it was before the first."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from chworkers import gcpause


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generations of the collections that run while the test does."""
    seen: list[int] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.collect()
    gc.callbacks.append(callback)
    try:
        yield seen
    finally:
        gc.callbacks.remove(callback)


def reply(entries: int) -> list[Any]:
    """A reply as hiredis makes one: a list per entry and one per entry's fields."""
    return [[b"%d-0" % i, [b"data", b"x" * 200]] for i in range(entries)]


def test_a_reply_made_and_freed_in_a_pause_sets_off_no_collection(
    collections: list[int],
) -> None:
    with gcpause.paused():
        framed = b"".join(fields[1] for _id, fields in reply(20_000))
    [[] for _ in range(100)]  # allocations after the pause: nothing is due
    assert len(framed) == 4_000_000
    assert collections == []
    assert gc.isenabled()
    # The same reply without the pause: collected dozens of times while it is made.
    b"".join(fields[1] for _id, fields in reply(20_000))
    assert len(collections) > 20


def test_pauses_nest_and_overlap_across_threads() -> None:
    inner_done, outer_may_end = threading.Event(), threading.Event()

    def other() -> None:
        with gcpause.paused():
            inner_done.set()
            outer_may_end.wait(10)

    with gcpause.paused():
        thread = threading.Thread(target=other)
        thread.start()
        assert inner_done.wait(10)
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread's pause goes on
    outer_may_end.set()
    thread.join(10)
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with gcpause.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_child_forked_during_a_pause_has_its_collector_on() -> None:
    with gcpause.paused():
        pid = os.fork()
        if pid == 0:  # the child: exit at once, saying whether its collector runs
            os._exit(0 if gc.isenabled() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
