"""Public calls given a bad argument raise a ConfigError, and ``timeout`` means one thing.

The issue-12 review found calls outside the rule "errors that escape are from the
ChworkersError tree; a bad argument is a ConfigError": ``Notifier.notify`` with a key
systemd does not know and ``Watchdog(interval=...)`` raised the builtin ValueError (and a
NaN interval was taken); a task whose function is not callable raised TypeError, and so
did ``DeadLetter.batch()`` on a call's letter. ``Connection.ping(timeout=None)`` meant
"the connect timeout" where None means "no limit" everywhere else, a timeout of 0 was
replaced by the default, and a negative one turned a healthy connection into a broken one
(clickhouse-connect refused it, the refusal read as a failed ping). ``Ticket.wait`` and
``settle`` took a negative or NaN timeout as "time is up" instead of refusing it.
``Supervisor.drain()`` from a future's callback raised the builtin RuntimeError, and a
never-started supervisor's ``stop()`` did not look at its timeout, nor did
``EmbeddedClickHouse.stop()`` (typed as seconds only, None worked by chance).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from chworkers import (
    ChworkersError,
    ConfigError,
    Connection,
    EmbeddedClickHouse,
    Middleware,
    Supervisor,
    TaskInfo,
)
from chworkers.daemon.ticket import Ticket
from chworkers.ops.systemd import Notifier
from chworkers.ops.watchdog import Watchdog
from chworkers.workers import tasks
from chworkers.workers.deadletter import DeadLetter

pytestmark = pytest.mark.timeout(60)


def test_a_notification_key_systemd_does_not_know_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a systemd notification key") as info:
        Notifier(None).notify(ready="1")
    assert isinstance(info.value, ChworkersError)
    assert info.value.value == "ready"


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
def test_a_watchdog_interval_that_is_not_positive_is_a_config_error(bad: float) -> None:
    with pytest.raises(ConfigError, match="watchdog interval"):
        Watchdog(Notifier(None), lambda: True, interval=bad)


def test_a_task_function_that_is_not_callable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not callable") as info:
        tasks.encode_call(1, Future(), tasks.CALL, 42, (), {})  # type: ignore[arg-type]
    assert info.value.key == "fn"


def test_the_batch_of_a_call_letter_is_a_config_error() -> None:
    letter = DeadLetter(
        task_id=7, kind=tasks.CALL, description="f()", error=ValueError("x"), reason="error"
    )
    with pytest.raises(ConfigError, match="not an insert") as info:
        letter.batch()
    assert info.value.key == "kind"


@pytest.fixture
def conn(endpoint: EmbeddedClickHouse, database: str) -> Iterator[Connection]:
    c = Connection({"url": endpoint.url, "database": database})
    yield c
    c.close()


@pytest.mark.parametrize("bad", [-1, math.nan, 0, "1"])
def test_a_bad_ping_timeout_is_refused_and_the_connection_stays_usable(
    conn: Connection, bad: object
) -> None:
    with pytest.raises(ConfigError, match="ping timeout"):
        conn.ping(bad)  # type: ignore[arg-type]
    assert not conn.broken
    assert conn.command("SELECT 1") == 1


def test_ping_none_is_no_limit_of_its_own(conn: Connection) -> None:
    assert conn.ping(None) is True
    assert conn.ping() is True
    assert conn.ping(0.5) is True
    assert not conn.broken


def _pending_ticket() -> Ticket:
    return Ticket(lambda ticket: True, b"{}\n", 1, None, retry=False, deadline=None)


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_a_bad_ticket_timeout_is_a_config_error(bad: float) -> None:
    ticket = _pending_ticket()
    with pytest.raises(ConfigError):
        ticket.wait(bad)
    with pytest.raises(ConfigError):
        ticket.settle(bad)
    assert not ticket.done()  # refused before anything: the records are still pending


def test_stop_checks_its_timeout_also_before_the_start() -> None:
    """A never-started supervisor's stop returned before looking at ``timeout``."""
    sup = Supervisor(workers=1)
    with pytest.raises(ConfigError, match="timeout"):
        sup.stop(timeout="soon")  # type: ignore[arg-type]
    sup.stop()


def test_drain_from_a_future_callback_is_a_config_error() -> None:
    """drain() on the supervisor's loop (a future's callback) would wait for itself; it
    raised the builtin RuntimeError."""
    raised: list[BaseException] = []
    on_the_loop = threading.Event()

    def drain_from_the_loop(_: Future[object]) -> None:
        if threading.current_thread() is threading.main_thread():
            return  # the task was done before the callback was added: not on the loop
        try:
            sup.drain(5)
        except BaseException as exc:
            raised.append(exc)
        on_the_loop.set()

    with Supervisor(workers=1) as sup:
        for _ in range(5):
            sup.call(time.sleep, 0.2).add_done_callback(drain_from_the_loop)
            if on_the_loop.wait(60):
                break
    assert on_the_loop.is_set()
    assert len(raised) == 1
    assert isinstance(raised[0], ConfigError), raised
    assert "wait for itself" in str(raised[0])


def test_the_embedded_endpoints_stop_takes_timeouts_as_everywhere(tmp_path: Path) -> None:
    """``EmbeddedClickHouse.stop(timeout)`` was typed as seconds only and took anything."""
    ch = EmbeddedClickHouse(tmp_path / "data")
    with pytest.raises(ConfigError, match="timeout"):
        ch.stop(-1)
    with pytest.raises(ConfigError, match="timeout"):
        ch.restart(math.nan)
    assert ch.stop(None) is None  # not running: nothing to wait for


class _Seen(Middleware):
    worker_side = False

    def __init__(self) -> None:
        self.tasks: list[object] = []

    def after_task_done(self, task: TaskInfo, error: BaseException | None, duration: float) -> None:
        self.tasks.append(task)


def test_after_task_done_is_given_what_middleware_sees_of_a_task() -> None:
    """The supervisor-side hook was handed the supervisor's own Task (its bytes, its
    future, its bookkeeping) where the worker-side hooks get a TaskInfo."""
    seen = _Seen()
    with Supervisor(workers=1, middleware=[seen]) as sup:
        assert sup.call(time.sleep, 0).result(60) is None
    assert len(seen.tasks) == 1
    info = seen.tasks[0]
    assert isinstance(info, TaskInfo)
    assert info.kind == "call" and info.table is None and info.rows == 0
