"""Cross-process leases: real processes, real sockets, SIGKILL."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import multiprocess
import pytest
from waiting import wait_for

from chworkers.clickhouse.lease import LeaseBroker, LeaseClient
from chworkers.errors import ConfigError, PoolClosedError, PoolTimeoutError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def broker() -> Iterator[LeaseBroker]:
    b = LeaseBroker(2)
    b.start()
    yield b
    b.close()


# -- helpers run in child processes (module level so spawn can import them) -----------------


def _hammer(client: LeaseClient, active: Any, peak: Any, rounds: int, threads: int) -> None:
    def loop() -> None:
        for _ in range(rounds):
            client.acquire(10)
            with active.get_lock():
                active.value += 1
                peak.value = max(peak.value, active.value)
            time.sleep(0.0005)
            with active.get_lock():
                active.value -= 1
            client.release()

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def _take_and_report(client: LeaseClient, name: str, order: Any, hold: float) -> None:
    client.acquire(10)
    order.put(name)
    time.sleep(hold)
    client.release()
    time.sleep(0.2)  # let the release reach the broker before exiting


def _take_and_sleep(client: LeaseClient, n: int) -> None:
    for _ in range(n):
        client.acquire(5)
    time.sleep(60)


def _take_fork_and_sleep(client: LeaseClient, pids: Any) -> None:
    client.acquire(5)
    pid = os.fork()
    if pid == 0:  # a grandchild: it shares the process's descriptors, not its leases
        time.sleep(30)
        os._exit(0)
    pids.put(pid)
    time.sleep(60)


def _wait_and_report(client: LeaseClient, name: str, order: Any) -> None:
    client.acquire(10)
    order.put(name)
    time.sleep(60)


# -- tests ------------------------------------------------------------------------------------


def test_capacity_holds_across_processes_and_threads() -> None:
    ctx = multiprocess.get_context("fork")
    broker = LeaseBroker(3, context=ctx)
    broker.start()
    active, peak = ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [
        ctx.Process(target=_hammer, args=(broker.client(f"w{i}"), active, peak, 100, 4))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    stats = broker.stats()
    broker.close()
    assert peak.value == 3  # the capacity was used, and never exceeded
    assert stats.granted_total == 4 * 4 * 100


def test_timeout_when_everything_is_lent(broker: LeaseBroker) -> None:
    client = broker.client("main")
    client.acquire(1)
    client.acquire(1)
    start = time.monotonic()
    with pytest.raises(PoolTimeoutError, match="2 of 2 out"):
        client.acquire(0.2)
    assert 0.15 < time.monotonic() - start < 2.0
    assert broker.stats().timeouts_total == 1
    client.release()
    client.acquire(1)  # freed capacity is usable again
    assert client.held == 2


def test_fifo_across_processes(broker: LeaseBroker) -> None:
    ctx = multiprocess.get_context("fork")
    main = broker.client("main")
    main.acquire(1)
    main.acquire(1)
    order = ctx.Queue()
    procs = []
    for i, name in enumerate(["first", "second", "third"]):
        p = ctx.Process(target=_take_and_report, args=(broker.client(name), name, order, 0.05))
        p.start()
        procs.append(p)
        wait_for(lambda i=i: broker.stats().waiting == i + 1)
    main.release()  # one lease at a time: the queue drains in arrival order
    got = [order.get(timeout=10) for _ in procs]
    for p in procs:
        p.join(10)
    assert got == ["first", "second", "third"]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sigkilled_holder_is_reclaimed_by_the_broker(method: str) -> None:
    ctx = multiprocess.get_context(method)
    broker = LeaseBroker(2, context=ctx)
    broker.start()
    try:
        p = ctx.Process(target=_take_and_sleep, args=(broker.client("doomed"), 2))
        p.start()
        wait_for(lambda: broker.stats().by_holder == {"doomed": 2}, timeout=20)
        survivor = broker.client("survivor")
        with pytest.raises(PoolTimeoutError):
            survivor.acquire(0.05)
        assert p.pid is not None
        os.kill(p.pid, signal.SIGKILL)
        p.join(5)
        survivor.acquire(5)  # granted as soon as the dead holder's leases come back
        stats = broker.stats()
        assert stats.reclaimed_total == 2
        assert stats.by_holder == {"survivor": 1}
        assert broker.reclaim("doomed") == 2  # reports what the broker took back itself
        assert broker.reclaim("doomed") == 0
    finally:
        broker.close()


def test_reclaim_reports_what_a_gone_holder_held(broker: LeaseBroker) -> None:
    ctx = multiprocess.get_context("fork")
    p = ctx.Process(target=_take_and_sleep, args=(broker.client("w1"), 1))
    p.start()
    try:
        wait_for(lambda: broker.stats().in_use == 1)
        assert broker.reclaim("w1") == 1  # disconnected and reported...
        assert broker.reclaim("w1") == 0
        # ...but a live process keeps what it holds: never more out than the capacity.
        assert broker.stats().in_use == 1
    finally:
        p.kill()
        p.join()
    wait_for(lambda: broker.stats().in_use == 0)  # the kernel freed it with the process


def test_resize_lets_waiters_in(broker: LeaseBroker) -> None:
    client = broker.client("main")
    client.acquire(1)
    client.acquire(1)
    result: list[BaseException | None] = []

    def waiter() -> None:
        try:
            client.acquire(5)
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    wait_for(lambda: broker.stats().waiting == 1)
    broker.resize(3)
    t.join(5)
    assert result == [None]
    assert broker.stats().capacity == 3
    with pytest.raises(ConfigError):
        broker.resize(0)


def test_close_refuses_waiting_and_new_requests() -> None:
    broker = LeaseBroker(1)
    broker.start()
    client = broker.client("main")
    client.acquire(1)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            client.acquire(10)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    wait_for(lambda: broker.stats().waiting == 1)
    broker.close()
    t.join(5)
    assert len(errors) == 1 and isinstance(errors[0], PoolClosedError)
    with pytest.raises(PoolClosedError):
        broker.client("late").acquire(1)
    assert not os.path.exists(broker.address)


def test_client_pickles_and_works_in_the_same_process(broker: LeaseBroker) -> None:
    client = pickle.loads(pickle.dumps(broker.client("w1")))
    client.acquire(1)
    assert broker.stats().by_holder == {"w1": 1}
    client.release()
    wait_for(lambda: broker.stats().in_use == 0)
    client.release()  # one too many: logged, not fatal
    assert "w1" in repr(client) and "capacity 2" in repr(broker)


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(ConfigError, match="capacity"):
        LeaseBroker(0)
    broker = LeaseBroker(1)
    try:
        with pytest.raises(ConfigError, match="holder"):
            broker.client("")
        with pytest.raises(ConfigError, match="timeout"):
            broker.client("x").acquire(-1)
    finally:
        broker.close()


def test_a_garbled_client_is_dropped_and_the_broker_keeps_serving(broker: LeaseBroker) -> None:
    import socket as _socket

    from multiprocess.connection import Connection as MPConnection

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.connect(broker.address)
    rogue = MPConnection(sock.detach())
    rogue.send(("hello", "rogue", os.getpid()))
    assert rogue.recv()[0] == "welcome"
    rogue.send(("acquire",))  # malformed: no request id
    with pytest.raises((EOFError, OSError)):
        rogue.recv()  # the broker hung up on it
    client = broker.client("good")
    client.acquire(1)
    assert broker.stats().by_holder == {"good": 1}


def test_a_request_waiting_at_the_broker_is_not_overtaken(broker: LeaseBroker) -> None:
    ctx = multiprocess.get_context("fork")
    main = broker.client("main")
    main.acquire(1)
    main.acquire(1)
    order = ctx.Queue()
    p = ctx.Process(target=_wait_and_report, args=(broker.client("first"), "first", order))
    p.start()
    try:
        wait_for(lambda: broker.stats().waiting == 1)
        main.release()
        with pytest.raises(PoolTimeoutError):
            main.acquire(0)  # the lease just freed is the waiting request's
        assert order.get(timeout=10) == "first"
        assert broker.stats().by_holder == {"main": 1, "first": 1}
    finally:
        p.kill()
        p.join()


def test_a_shrunk_capacity_grants_nothing_until_below_it(broker: LeaseBroker) -> None:
    broker.resize(3)
    main, other = broker.client("main"), broker.client("other")
    for _ in range(3):
        main.acquire(1)
    broker.resize(1)
    main.release()  # 2 out, capacity 1
    with pytest.raises(PoolTimeoutError, match="2 of 1 out"):
        other.acquire(0.1)
    main.release()  # 1 out
    with pytest.raises(PoolTimeoutError):
        other.acquire(0.1)
    main.release()  # 0 out
    other.acquire(5)
    with pytest.raises(PoolTimeoutError):
        main.acquire(0.1)
    assert broker.stats().in_use == 1


def test_a_fork_of_a_holder_does_not_keep_its_leases() -> None:
    """Forked children share their parent's descriptors; the lease file's must not keep
    the parent's slots locked once the parent is gone."""
    ctx = multiprocess.get_context("fork")
    broker = LeaseBroker(1, context=ctx)
    broker.start()
    pids = ctx.Queue()
    p = ctx.Process(target=_take_fork_and_sleep, args=(broker.client("parent"), pids))
    p.start()
    grandchild = pids.get(timeout=10)
    try:
        assert broker.stats().in_use == 1
        os.kill(p.pid or 0, signal.SIGKILL)
        p.join(5)
        broker.client("next").acquire(5)  # free while the grandchild still runs
        assert broker.stats().by_holder == {"next": 1}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)
        broker.close()


def test_many_threads_of_one_process_share_its_slots_exactly(broker: LeaseBroker) -> None:
    client = broker.client("main")
    active, peak = 0, 0
    lock = threading.Lock()

    def loop() -> None:
        nonlocal active, peak
        for _ in range(200):
            client.acquire(10)
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.0002)
            with lock:
                active -= 1
            client.release()

    threads = [threading.Thread(target=loop) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2
    stats = broker.stats()
    assert (stats.in_use, stats.granted_total, client.held) == (0, 1200, 0)


def test_a_waiter_killed_in_the_queue_does_not_hold_up_the_next(broker: LeaseBroker) -> None:
    ctx = multiprocess.get_context("fork")
    main = broker.client("main")
    main.acquire(1)
    main.acquire(1)
    order = ctx.Queue()
    doomed = ctx.Process(target=_wait_and_report, args=(broker.client("doomed"), "doomed", order))
    doomed.start()
    wait_for(lambda: broker.stats().waiting == 1)
    nxt = ctx.Process(target=_wait_and_report, args=(broker.client("next"), "next", order))
    nxt.start()
    try:
        wait_for(lambda: broker.stats().waiting == 2)
        os.kill(doomed.pid or 0, signal.SIGKILL)
        doomed.join(5)
        main.release()
        assert order.get(timeout=10) == "next"
        assert broker.stats().by_holder == {"main": 1, "next": 1}
    finally:
        nxt.kill()
        nxt.join()


def test_a_closed_broker_leaves_no_descriptor_or_file_behind() -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    LeaseBroker(1).close()  # imports and first-use allocations out of the count
    before = open_fds()
    for _ in range(20):
        broker = LeaseBroker(2)
        broker.start()
        client = broker.client("main")
        client.acquire(1)
        broker.close()
        client.close()
        assert not os.path.exists(broker.slots_path)
        stats = broker.stats()  # still answers, from what it folded at closing
        assert (stats.in_use, stats.granted_total, stats.clients) == (0, 1, 0)
    assert open_fds() <= before + 2  # a stray one from a lazily started thread, at most
