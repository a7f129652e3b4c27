"""Regression test: ``chworkers embedded``'s limit flags take values as the config does.

``[clickhouse.embedded.limits] body_timeout = "90s"`` was accepted in the daemon's config
but ``--body-timeout 90s`` was refused as "invalid float value", and an out-of-range
``--max-connections 0`` passed argparse and failed later. The flags now parse with the
settings' own parser (durations, minimums), and a bad value is a usage error that says
what is expected.
"""

from __future__ import annotations

import argparse

import pytest

from chworkers.http.limits import HttpLimits
from chworkers.settings import flags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chworkers embedded")
    flags.add_flags(parser, HttpLimits)
    return parser


def test_limit_flags_take_durations_as_the_config_does() -> None:
    args = _parser().parse_args(["--body-timeout", "90s", "--keep-alive-timeout", "250ms"])
    limits = flags.from_flags(HttpLimits, args)
    assert limits.body_timeout == 90.0 and limits.idle_timeout == 0.25


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--body-timeout", "soon"],
            "argument --body-timeout: 'soon' is invalid: expected a duration",
        ),
        (
            ["--max-connections", "0"],
            "argument --max-connections: '0' is invalid: expected a value >= 1",
        ),
    ],
)
def test_a_bad_limit_flag_is_a_usage_error_saying_what_is_expected(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(argv)
    assert info.value.code == 2
    assert expected in capsys.readouterr().err
