"""A worker replaced for its memory and its supervisor say the same about its tasks.

Before, in a user trial of issue 16 (tasks that leak 20 MiB each through 2 workers, a
150 MiB limit), the two log lines of one replacement contradicted each other:
``worker-4: RSS 151.4 MiB is over max_worker_memory (150.0 MiB) after 6 tasks:
replacing it (0 tasks handed back)`` and then ``worker-4 (pid ...) exited with code 0:
memory; 1 task(s) handed back``. The worker counted the tasks it had read from its pipe
and not started; the supervisor hands back every task it sent the worker, those still
in the pipe too. Only the supervisor's count is the whole one.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(60)

MiB = 2**20
_LEAKED: list[bytes] = []


def _rss() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _leak(n: int) -> int:
    _LEAKED.append(b"\x01" * (10 * MiB))  # pages written, so resident
    time.sleep(0.005)
    return n


def test_the_worker_leaves_the_count_of_its_tasks_to_the_supervisor(
    make_sup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sup = make_sup(workers=2)
    fresh = max(sup.call(_rss).result(20) for _ in range(4))
    sup.reconfigure(max_worker_memory=fresh + 28 * MiB)
    with caplog.at_level(logging.INFO):
        results = [f.result(30) for f in [sup.call(_leak, n) for n in range(24)]]
        assert sorted(results) == list(range(24))
        wait = time.monotonic() + 20
        while sup.stats().restarts.get("memory", 0) < 4 and time.monotonic() < wait:
            time.sleep(0.05)
    over = [r.getMessage() for r in caplog.records if "over max_worker_memory" in r.getMessage()]
    exits = [
        r.getMessage() for r in caplog.records if "exited with code 0: memory" in r.getMessage()
    ]
    assert len(over) >= 4 and len(exits) >= 4, (over, exits)
    for line in over:
        # No count of its own that the supervisor's exit line may contradict.
        assert "handed back" not in line, line
        assert "the tasks it was sent but has not started go to other workers" in line, line
    for line in exits:
        assert re.search(r": memory; \d+ task\(s\) handed back", line), line
