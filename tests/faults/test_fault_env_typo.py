"""A `CHWORKERS_*` variable that names no setting is reported, not silently ignored.

A key the config file does not know is an error with a suggestion, but
`CHWORKERS_SUPERVISOR_WORKERZ=8` (or a pipeline's variable under a name no pipeline has)
in a unit's environment file left the default in force without a word.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from chworkers.daemon import config

DATA: dict[str, Any] = {
    "clickhouse": {"url": "http://127.0.0.1:8123/db"},
    "pipelines": [{"name": "app-logs", "source": "stdin", "table": "ev"}],
}


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_typos_are_named_with_the_closest_variable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="chworkers.daemon.config")
    env = {
        "CHWORKERS_SUPERVISOR_WORKERZ": "8",
        "CHWORKERS_STATE_DIRR": "/srv",
        "CHWORKERS_PIPELINE_APP_LOGS_MAX_ROW": "5",
        "CHWORKERS_PIPELINE_APPLOGS_MAX_DELAY": "5s",
        "CHWORKERS_SPOOL_SOMETHING": "1",
    }
    cfg = config.load(data=DATA, env=env)
    assert cfg.settings.supervisor.workers != 8
    said = warnings(caplog)
    assert said == [
        "environment variable CHWORKERS_PIPELINE_APPLOGS_MAX_DELAY names no setting: ignored "
        "(did you mean CHWORKERS_PIPELINE_APP_LOGS_MAX_DELAY?)",
        "environment variable CHWORKERS_PIPELINE_APP_LOGS_MAX_ROW names no setting: ignored "
        "(did you mean CHWORKERS_PIPELINE_APP_LOGS_MAX_ROWS?)",
        "environment variable CHWORKERS_SPOOL_SOMETHING names no setting: ignored "
        "(see `chworkers config --defaults` for every variable)",
        "environment variable CHWORKERS_STATE_DIRR names no setting: ignored "
        "(did you mean CHWORKERS_STATE_DIR?)",
        "environment variable CHWORKERS_SUPERVISOR_WORKERZ names no setting: ignored "
        "(did you mean CHWORKERS_SUPERVISOR_WORKERS?)",
    ]


def test_a_pipeline_that_does_not_exist(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="chworkers.daemon.config")
    config.load(data=DATA, env={"CHWORKERS_PIPELINE_NGINX_MAX_ROWS": "5"})
    assert warnings(caplog) == [
        "environment variable CHWORKERS_PIPELINE_NGINX_MAX_ROWS names no setting: ignored "
        "(a pipeline's variables are CHWORKERS_PIPELINE_APP_LOGS_<KEY>)"
    ]


def test_real_variables_and_other_programs_variables_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="chworkers.daemon.config")
    env = {
        "CHWORKERS_CLICKHOUSE_PASSWORD_FILE": "/dev/null",
        "CHWORKERS_HTTP_TOKEN": "t",
        "CHWORKERS_PIPELINE_APP_LOGS_MAX_ROWS": "5",
        "CHWORKERS_PIPELINE_APP_LOGS_REDIS_PASSWORD": "p",
        "CHWORKERS_EMBEDDED_PASSWORD": "p",  # chworkers embedded's
        "CHWORKERS_FAULT_SEED": "1",  # the fault drills'
        "CHWORKERS_STATE_DIR": "/tmp/x",
    }
    config.load(data=DATA, env=env)
    assert warnings(caplog) == []
