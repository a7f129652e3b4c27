"""A backlog the autoscaler adds no worker for is said once, at INFO, with the reason.

Before, in a user trial of issue 16 (`chworkers run` with `min_workers = 1`,
`max_workers = 4`, eight HTTP clients pushing 800,000 rows on a machine at load 15),
the count stayed at 1 for the whole burst with 7 batches queued and nothing in the log
said why: the reasons (no CPU to spare, workers waiting for a connection) were logged at
DEBUG only, once per look.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pytest

from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(90)

HELD = "but no worker is added: "


def _spin(seconds: float) -> int:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return os.getpid()


def _hold_connection(conn: Any, seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _held(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if HELD in r.getMessage()]


def test_no_cpu_to_spare_is_said_once_per_backlog(
    make_sup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker spinning keeps a core busy: the machine is never 100 % idle.
    sup = make_sup(workers=1, max_workers=2, scale_up_after=0.2, scale_up_min_idle_cpu=1.0)
    with caplog.at_level(logging.INFO, logger="chworkers.workers.autoscale"):
        futures = [sup.call(_spin, 0.1) for _ in range(20)]
        assert len({f.result(60) for f in futures}) == 1
    held = _held(caplog)
    assert len(held) == 1, held  # one backlog, one reason: said once, not at every look
    assert "the CPU was " in held[0] and "below scale_up_min_idle_cpu (100%)" in held[0]
    assert "queued" in held[0]
    sample = sup.registry.get_sample_value
    assert sample("chworkers_worker_scaling_total", {"direction": "up"}) == 0


def test_workers_waiting_for_a_connection_is_said(
    make_sup: Any, endpoint: EmbeddedClickHouse, caplog: pytest.LogCaptureFixture
) -> None:
    sup = make_sup(
        clickhouse=endpoint.url,
        workers=1,
        max_workers=3,
        max_connections=1,
        scale_up_after=0.2,
        scale_up_min_idle_cpu=0,
    )
    with caplog.at_level(logging.INFO, logger="chworkers.workers.autoscale"):
        futures = [sup.submit(_hold_connection, 0.05) for _ in range(60)]
        for f in futures:
            f.result(60)
    held = _held(caplog)
    assert held, [r.getMessage() for r in caplog.records]
    assert all("workers wait for a ClickHouse connection" in line for line in held), held
    assert len(held) <= 3, held  # per backlog, not per look (four a second)
