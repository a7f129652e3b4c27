"""HostSelector: spreading, cooldown that doubles and caps, re-probe, all-down fallback."""

from __future__ import annotations

from chworkers.clickhouse.dsn import Host
from chworkers.clickhouse.hosts import HostSelector
from chworkers.clickhouse.pooloptions import PoolOptions

A, B, C = Host("a", 1), Host("b", 1), Host("c", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_new_connections_go_to_the_least_loaded_host_in_turn() -> None:
    sel = HostSelector([A, B, C], clock=Clock())
    chosen = []
    for _ in range(6):
        host = sel.choose()
        sel.opened(host)
        chosen.append(host)
    assert sorted(chosen) == [A, A, B, B, C, C]
    sel.closed(B)
    assert sel.choose() == B


def test_cooldown_doubles_caps_and_clears_on_success() -> None:
    clock = Clock()
    sel = HostSelector([A, B], PoolOptions(host_cooldown=1.0, max_host_cooldown=3.0), clock=clock)
    sel.report_failure(A, ConnectionError("refused"))
    assert sel.is_down(A) and sel.choose() == B
    clock.now += 1.01
    assert not sel.is_down(A) and sel.due_for_probe() == [A]  # eligible again: re-probe
    sel.report_failure(A)
    clock.now += 1.5
    assert sel.is_down(A)  # second failure: 2 s
    clock.now += 0.6
    sel.report_failure(A)
    sel.report_failure(A)
    snap = {s["host"]: s for s in sel.snapshot()}
    assert snap["a:1"]["failures"] == 4 and 2.9 < float(str(snap["a:1"]["down_for"])) <= 3.0
    sel.report_success(A)
    assert not sel.is_down(A) and sel.due_for_probe() == []


def test_when_every_host_is_down_the_soonest_back_is_tried() -> None:
    clock = Clock()
    sel = HostSelector([A, B], PoolOptions(host_cooldown=1.0), clock=clock)
    sel.report_failure(A)
    clock.now += 0.5
    sel.report_failure(B)
    assert sel.choose() == A
