"""``timeout=None`` means "no limit" across the public API; DEFAULT means the setting."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from chworkers import Supervisor
from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.spool import Spool
from chworkers.errors import ChworkersError, ConfigError, WaitTimeoutError
from chworkers.timeouts import DEFAULT, resolve


def test_resolve_none_is_no_limit_and_default_is_the_setting() -> None:
    assert resolve(None, 5.0) is None
    assert resolve(DEFAULT, 5.0) == 5.0
    assert resolve(DEFAULT, None) is None
    assert resolve(0, 5.0) == 0.0
    assert resolve(2, None) == 2.0


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, "5", True])
def test_resolve_refuses_what_is_not_a_timeout(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(bad, 5.0, name="timeout")  # type: ignore[arg-type]
    assert info.value.key == "timeout"


def test_supervisor_refuses_a_negative_timeout_before_queueing() -> None:
    sup = Supervisor("http://127.0.0.1:1/db", workers=1, native_encoding=False)
    with pytest.raises(ConfigError, match="must not be negative"):
        sup.insert("t", [(1,)], timeout=-1)
    with pytest.raises(ConfigError):
        sup.drain(timeout=-1)
    assert sup.stats().outstanding == 0  # nothing was admitted


def test_stop_with_timeout_none_drains_without_a_limit() -> None:
    # graceful_timeout is far shorter than the task: only "no limit" lets it finish.
    with Supervisor(workers=1, graceful_timeout=0.05) as sup:
        future = sup.call(time.sleep, 1.0)
        sup.stop(timeout=None)
    assert future.result(0) is None
    assert sup.state == "stopped"


def test_a_ticket_wait_that_runs_out_is_a_tree_error_and_a_timeout_error(
    tmp_path: Path,
) -> None:
    batcher = Batcher(Spool(tmp_path), lambda batch: None, limits=BatchLimits(max_delay=60))
    ticket = batcher.add("t", b"1\n", 1, format="CSV")
    with pytest.raises(WaitTimeoutError) as info:
        ticket.wait(0.01)
    assert isinstance(info.value, ChworkersError) and isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.01
    batcher.close()
