"""Recycling workers by memory (``max_worker_memory``), with real worker processes and a
task that leaks on purpose."""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import waiting

pytestmark = pytest.mark.timeout(60)

MiB = 2**20
_LEAKED: list[mmap.mmap] = []


def rss() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def leak(n: int, log_path: str, mib: int) -> tuple[int, int, int]:
    """Record that task ``n`` ran (once per run, in a shared file), then keep ``mib``
    MiB for good; returns (task, pid, RSS before it leaked).

    The MiB are pages of an anonymous mapping of their own, each written: new resident
    memory whatever malloc holds. A ``bytes`` of 10 MiB comes from malloc, which can hand
    out memory freed but resident in the process the worker was forked from (glibc keeps
    up to twice its mmap threshold free in an arena, and the threshold rises to the
    largest block freed, up to 32 MiB; a worker's thread is given one of the arenas of
    that process's threads gone): such a leak left the RSS as it was, a worker ran up to
    6 where the test counted on 3, and a full run saw 4 workers for the 24 tasks."""
    before = rss()
    with open(log_path, "a") as fh:
        fh.write(f"{n} {os.getpid()}\n")
    pages = mmap.mmap(-1, mib * MiB)
    for offset in range(0, len(pages), mmap.PAGESIZE):
        pages[offset] = 1
    _LEAKED.append(pages)
    time.sleep(0.005)
    return n, os.getpid(), before


def leave_freed_heap() -> None:
    """Leave this process's heap as a process that has run other tests may: a thread,
    gone, left 40 MiB freed but still resident in its malloc arena, which a worker forked
    from here inherits and whose thread that runs tasks may be given."""

    def allocate() -> None:
        large = bytearray(30 * MiB)  # malloc's mmap threshold rises to it once freed
        del large
        blocks = [bytearray(10 * MiB) for _ in range(4)]  # from the arena's heap now
        del blocks

    thread = threading.Thread(target=allocate)
    thread.start()
    thread.join()


def test_a_worker_over_max_worker_memory_is_replaced_after_its_task(
    make_sup: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    leave_freed_heap()
    sup = make_sup(workers=2)
    # A fresh worker's RSS (forked from this test process), then room for ~3 leaks.
    fresh = max(sup.call(rss).result(20) for _ in range(4))
    limit = fresh + 28 * MiB
    sup.reconfigure(max_worker_memory=limit)
    runs = tmp_path / "runs"
    with caplog.at_level(logging.WARNING):
        futures = [sup.call(leak, n, str(runs), 10) for n in range(24)]
        results = [f.result(30) for f in futures]
        waiting.wait_for(
            lambda: sup.stats().restarts.get("memory", 0) >= 4,
            timeout=20,
            what="the workers over the limit reaped",
        )
    # Every task ran exactly once, none lost and none twice (the tasks a worker held but
    # had not started when it went over were run by others).
    ran = [int(line.split()[0]) for line in runs.read_text().splitlines()]
    assert sorted(ran) == list(range(24))
    # No task started in a worker already over the limit: it left after the task that
    # took it over.
    assert all(before <= limit for _, _, before in results), [r[2] - limit for r in results]
    pids = {pid for _, pid, _ in results}
    assert len(pids) >= 5  # 240 MiB of leaks through workers that hold ~30 each
    text = caplog.text
    assert "over max_worker_memory" in text and "MiB" in text
    assert sup.stats().restarts.keys() == {"memory"}
    # Read together once the recycling is over: a worker still over the limit may be
    # replaced between two reads (7 against 8 in a full run under load).
    waiting.wait_for(
        lambda: (
            sup.registry.get_sample_value("chworkers_worker_restarts_total", {"reason": "memory"})
            == sup.stats().restarts["memory"]
        ),
        timeout=20,
        what="the restarts metric to agree with the supervisor's count",
    )
    assert sup.registry.get_sample_value("chworkers_worker_memory_limit_bytes") is not None


def test_a_limit_below_a_fresh_worker_is_refused_not_obeyed(
    make_sup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Every worker is over 1 MiB before it runs anything: obeying would replace workers
    # after every task. It is said once per worker instead.
    with caplog.at_level(logging.ERROR):
        sup = make_sup(workers=1, max_worker_memory="1MiB")
        pids = {f.result(20) for f in [sup.call(os.getpid) for _ in range(200)]}
        waiting.wait_for(
            lambda: "below the RSS of a worker that has run nothing" in caplog.text,
            timeout=10,
            what="the refusal logged",
        )
    assert len(pids) == 1
    assert sup.stats().restarts == {}


def test_the_memory_gauge_follows_the_workers(make_sup: Any) -> None:
    sup = make_sup(workers=1, max_worker_memory="4GiB")
    sup.call(os.getpid).result(20)
    sample = sup.registry.get_sample_value

    def scraped() -> bool:
        sup._probes.refresh()  # what a scrape of /metrics does first
        return (sample("chworkers_worker_memory_bytes", {"stat": "max"}) or 0) > MiB

    waiting.wait_for(lambda: sup.call(os.getpid).result(20) > 0 and scraped(), timeout=10)
    assert sample("chworkers_worker_memory_limit_bytes") == 4 * 2**30
