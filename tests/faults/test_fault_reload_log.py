"""A reload says what it changed, old -> new, readably.

The supervisor logged the raw mapping it was handed: on every SIGHUP the daemon passes
every reloadable setting, changed or not, so the line was a dict of some thirty values
and a ``RetryPolicy(...)`` repr with the whole retry-code set, and said nothing about
what the values had been.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from chworkers.workers.supervisor import Supervisor


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor(workers=1, start_method="fork", metrics_port=None)
    sup.start()
    try:
        yield sup
    finally:
        sup.stop(graceful=False)


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("chworkers.workers") and r.getMessage().startswith("settings")
    ]


def test_reconfigure_logs_each_change_old_to_new(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chworkers.workers")
    options = supervisor.options
    everything = {
        name: getattr(options, name) for name in type(options).reloadable() - {"max_connections"}
    }
    # What a SIGHUP passes: every reloadable setting, three of them changed.
    supervisor.reconfigure(
        **{**everything, "workers": 2, "graceful_timeout": 5.0, "max_worker_memory": 512 << 20},
        retry={"max_attempts": 3, "initial_backoff": 0.1},
    )
    assert _said(caplog) == [
        "settings now: workers 1 -> 2, graceful_timeout 30 s -> 5 s, max_worker_memory "
        "none -> 512 MiB, retry.max_attempts 5 -> 3"
    ]
    caplog.clear()
    supervisor.reconfigure(
        **{**everything, "workers": 2, "graceful_timeout": 5.0, "max_worker_memory": 512 << 20}
    )
    assert _said(caplog) == []  # nothing changed: nothing said at INFO


def test_a_changed_secret_is_said_to_have_changed_and_nothing_more() -> None:
    from chworkers.daemon.options import HttpSettings
    from chworkers.settings import render_changes

    before, after = HttpSettings(token="hunter2"), HttpSettings(token="s3cret", port=9000)
    assert render_changes(before, after) == ["port 8124 -> 9000", "token (secret) changed"]
