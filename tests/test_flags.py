"""Command-line flags derived from the settings declarations (chworkers/settings/flags.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Literal

import pytest
from clirun import run_chworkers

from chworkers.cli.main import build_parser
from chworkers.daemon import config
from chworkers.daemon.config import DaemonSettings
from chworkers.embedded.options import EmbeddedOptions
from chworkers.errors import ConfigError
from chworkers.settings import flags, section, setting, validate

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Inner:
    timeout: float = setting(2.0, "Wait this long.", unit="seconds", minimum=0.1, flag="--wait")
    size: int = setting(1024, "At most this much.", unit="bytes", minimum=1)  # no flag


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str | None = setting(None, "Who.", flag=("--name", "-n"), required=True)
    mode: Literal["fast", "safe"] = setting("safe", "How, 100% sure.", flag="--mode")
    fsync: bool = setting(True, "Sync.", flag="--fsync")
    codes: tuple[str, ...] = setting(("a",), "Codes.", flag="--codes")
    inner: Inner = section(Inner, "Inner.", flags=True)
    hidden: Inner = section(Inner, "Not offered on the command line.")

    def __post_init__(self) -> None:
        validate(self)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    flags.add_flags(parser, Outer)
    return parser


def test_flags_come_from_the_declarations() -> None:
    assert [(f.key, f.names) for f in flags.flags_of(Outer)] == [
        ("name", ("--name", "-n")),
        ("mode", ("--mode",)),
        ("fsync", ("--fsync",)),
        ("codes", ("--codes",)),
        ("inner.timeout", ("--wait",)),
    ]
    text = _parser().format_help()
    assert "Wait this long (default: 2s)." in text
    assert "How, 100% sure (default: safe)." in text  # a % in help is not a format
    assert "--no-fsync" in text and "{fast,safe}" in text and "--wait DURATION" in text


def test_only_given_flags_are_overrides_and_parse_as_the_file_does() -> None:
    args = _parser().parse_args(["-n", "x", "--wait", "250ms", "--no-fsync", "--codes", "b,c"])
    assert flags.given(args) == {
        "name": "x",
        "inner.timeout": 0.25,
        "fsync": False,
        "codes": ("b", "c"),
    }
    built = flags.from_flags(Outer, args)
    assert built == Outer(name="x", fsync=False, codes=("b", "c"), inner=Inner(timeout=0.25))


def test_arguments_give_the_same_settings_back() -> None:
    value = Outer(name="y", mode="fast", fsync=False, inner=Inner(timeout=3.5))
    argv = flags.arguments(value)
    assert argv == ["--name", "y", "--mode", "fast", "--no-fsync", "--codes", "a", "--wait", "3.5"]
    assert flags.from_flags(Outer, _parser().parse_args(argv)) == value


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-n", "x", "--wait", "soon"], "argument --wait: 'soon' is invalid: expected a duration"),
        (["-n", "x", "--wait", "0"], "argument --wait: '0' is invalid: expected a value >= 0.1"),
        (["-n", "x", "--mode", "slow"], "argument --mode: invalid choice: 'slow'"),
        ([], "the following arguments are required: --name/-n"),
    ],
)
def test_a_bad_flag_is_a_usage_error(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(argv)
    assert info.value.code == 2
    assert expected in capsys.readouterr().err


def test_a_required_setting_without_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="name is required"):
        Outer()


def test_a_flag_wins_over_the_environment_and_the_file() -> None:
    cfg = config.load(
        data={"state_dir": "from-file", "log": {"level": "WARNING"}},
        env={"CHWORKERS_STATE_DIR": "from-env", "CHWORKERS_LOG_LEVEL": "ERROR"},
        overrides={"state_dir": "from-flag"},
    )
    assert cfg.state_dir == Path("from-flag")
    assert cfg.settings.log.level == "ERROR"  # no flag: the environment's


def test_an_unknown_override_is_an_error_not_ignored() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'stat_dir'"):
        config.load(data={}, env={}, overrides={"stat_dir": "x"})


def test_every_daemon_flag_is_on_run_check_and_config() -> None:
    parser = build_parser()
    subcommands = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    for name in ("run", "check", "config"):
        text = subcommands[name].format_help()
        for flag in flags.flags_of(DaemonSettings):
            assert flag.names[0] in text, (name, flag.key)
    embedded = subcommands["embedded"].format_help()
    for flag in flags.flags_of(EmbeddedOptions):
        assert flag.names[0] in embedded, flag.key


def test_the_embedded_docs_name_every_flag() -> None:
    text = (ROOT / "docs" / "embedded.md").read_text()
    for flag in flags.flags_of(EmbeddedOptions):
        assert flag.names[0] in text, f"docs/embedded.md does not mention {flag.names[0]}"


def test_check_and_config_read_the_log_section_and_the_flags(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('state_dir = "s"\n[log]\nlevel = "WARNING"\nformat = "json"\n')

    def effective(*argv: str) -> dict[str, object]:
        result = run_chworkers(*argv, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    shown = effective("config", "-c", str(conf))
    assert shown["settings"]["log"] == {"level": "WARNING", "format": "json"}  # type: ignore[index]
    shown = effective(
        "--log-level", "DEBUG", "config", "-c", str(conf), "--state-dir", str(tmp_path / "x")
    )
    assert shown["settings"]["log"]["level"] == "DEBUG"  # type: ignore[index]
    assert shown["state_dir"] == str(tmp_path / "x")
