from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from chworkers.daemon import config
from chworkers.errors import ConfigError
from chworkers.http.limits import HttpLimits
from chworkers.settings import flags


def test_limits_round_trip_through_the_embedded_command_line() -> None:
    limits = HttpLimits(max_connections=7, idle_timeout=2.5, body_timeout="90s")  # type: ignore[arg-type]
    parser = argparse.ArgumentParser()
    flags.add_flags(parser, HttpLimits)
    assert flags.from_flags(HttpLimits, parser.parse_args(flags.arguments(limits))) == limits
    assert flags.from_flags(HttpLimits, parser.parse_args([])) == HttpLimits()
    given = flags.given(parser.parse_args(["--keep-alive-timeout", "3"]))
    assert given == {"idle_timeout": 3.0}


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        HttpLimits(max_connections=0)


def test_limits_in_the_daemon_configuration() -> None:
    data = {
        "http": {"limits": {"max_connections": 12, "header_timeout": "2s"}},
        "clickhouse": {"embedded": {"limits": {"max_connections": 5}}},
    }
    cfg = config.load(data=data, env={"CHWORKERS_METRICS_LIMITS_BACKLOG": "64"})
    s = cfg.settings
    assert s.http.limits.max_connections == 12 and s.http.limits.header_timeout == 2.0
    assert s.metrics.limits.backlog == 64
    assert s.clickhouse.embedded.limits.max_connections == 5
    assert s.clickhouse.embedded_endpoint(Path("/tmp/x")).limits.max_connections == 5
    assert s.http.max_buffered_bytes == 256 * 1024 * 1024
