"""The supervisor loop's mailbox: typed commands in, answers out, nobody left waiting."""

from __future__ import annotations

import threading

import pytest

from chworkers.errors import SupervisorStoppedError, WaitTimeoutError
from chworkers.workers.commands import Command, Mailbox, Stats, Stop, SupervisorStats


def stats() -> SupervisorStats:
    return SupervisorStats("running", (), 0, 10, 0, 0, {}, {})


def handler(command: Command[object]) -> object:
    match command:
        case Stats():
            return stats()
        case Stop(graceful=False):
            raise ValueError("no")
    return None


def test_ask_gets_the_answer_and_the_error_of_its_command() -> None:
    finished = threading.Event()
    woken = threading.Event()
    box = Mailbox(woken.set, finished)
    loop = threading.Thread(target=lambda: (woken.wait(5), box.deliver(handler)))
    loop.start()
    assert box.ask(Stats(), timeout=5) == stats()
    loop.join(5)
    woken.clear()
    loop = threading.Thread(target=lambda: (woken.wait(5), box.deliver(handler)))
    loop.start()
    with pytest.raises(ValueError, match="no"):
        box.ask(Stop(graceful=False), timeout=5)
    loop.join(5)
    assert not box


def test_a_command_the_loop_never_reads_times_out_as_a_tree_error() -> None:
    box = Mailbox(lambda: None, threading.Event())
    with pytest.raises(WaitTimeoutError) as info:
        box.ask(Stats(), timeout=0.05)
    assert isinstance(info.value, TimeoutError)


def test_a_sender_is_not_left_waiting_when_the_loop_ends() -> None:
    finished = threading.Event()
    box = Mailbox(lambda: None, finished)
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            box.ask(Stats(), timeout=None)  # no limit: only the loop's end can answer
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=ask)
    sender.start()
    finished.set()  # the loop ended without reading its mailbox
    sender.join(10)
    assert not sender.is_alive()
    assert [type(e) for e in errors] == [SupervisorStoppedError]


def test_refuse_fails_what_is_still_queued() -> None:
    box = Mailbox(lambda: None, threading.Event())
    box.tell(Stop())
    assert box
    box.refuse()
    assert not box
