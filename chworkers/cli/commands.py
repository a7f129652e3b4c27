"""The daemon's subcommands: ``run``, ``check`` (:mod:`chworkers.cli.check`) and
``config``.

Their settings flags (``--state-dir``, ``--log-level``, ...) are derived from
:class:`~chworkers.daemon.config.DaemonSettings`' declarations and win over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from types import MappingProxyType
from typing import Any

from chworkers.cli import demo
from chworkers.cli.check import check as check_command
from chworkers.cli.check import require_pipelines
from chworkers.daemon import config as config_module
from chworkers.daemon.config import DaemonSettings
from chworkers.ops import logs
from chworkers.settings import flags, redact_urls
from chworkers.workers import forkserver


def register(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the ingestion daemon",
        description="Run the ingestion daemon: sources -> batches -> spool -> ClickHouse. "
        "Settings come from the config file and CHWORKERS_* environment variables.",
    )
    run.add_argument("-c", "--config", help="the TOML config file")
    run.add_argument(
        "--demo",
        action="store_true",
        help="run a demo pipeline: generated events into the embedded ClickHouse",
    )
    run.add_argument("--rows", type=int, default=200_000, help="rows the demo generates")
    flags.add_flags(run, DaemonSettings, config_file=True)
    run.set_defaults(handler=_run)

    check = subparsers.add_parser(
        "check",
        help="validate a config file and reach ClickHouse",
        description="Validate the config (every key) and connect to ClickHouse.",
    )
    check.add_argument("-c", "--config", required=True, help="the TOML config file")
    flags.add_flags(check, DaemonSettings, config_file=True)
    check.set_defaults(handler=check_command)

    cfg = subparsers.add_parser(
        "config",
        help="print the defaults, the reference, or an effective config",
        description="Print configuration: every default (--defaults), the Markdown "
        "reference (--reference), or a file's effective settings with secrets hidden.",
    )
    group = cfg.add_mutually_exclusive_group(required=True)
    group.add_argument("--defaults", action="store_true", help="a TOML file of all defaults")
    group.add_argument("--reference", action="store_true", help="the Markdown reference")
    group.add_argument("-c", "--config", help="show this file's effective settings")
    flags.add_flags(cfg, DaemonSettings, config_file=True)
    cfg.set_defaults(handler=_config)


def _run(args: argparse.Namespace) -> int:
    if args.demo:
        cfg = demo.demo_config(args.rows, flags.given(args))
    elif args.config:
        cfg = config_module.load(args.config, overrides=flags.given(args))
    else:  # wrong usage of the command line: exit code 2, as argparse's own errors
        print(
            "chworkers run: error: nothing to run: give a config file (-c FILE) or try "
            "--demo; `chworkers config --defaults` prints a starting point",
            file=sys.stderr,
        )
        return 2
    require_pipelines(cfg)
    logs.configure(cfg.settings.log.level, cfg.settings.log.format)  # flags win: overrides
    # The workers' fork server imports what they need on another core while this process
    # imports the daemon and opens its spool and sources (docs/daemon.md, "Start-up").
    forkserver.start_early(cfg.settings.supervisor.start_method)
    from chworkers.daemon.service import Daemon

    progress = sys.stderr if sys.stderr.isatty() else None
    daemon = Daemon(cfg, progress=progress)
    if args.demo:
        daemon.before_stop = demo.print_result
    code = daemon.run()
    print(daemon.summary())
    return code


def _config(args: argparse.Namespace) -> int:
    if args.defaults:
        print(config_module.defaults_toml(), end="")
    elif args.reference:
        print(config_module.reference_markdown(), end="")
    else:
        cfg = config_module.load(args.config, overrides=flags.given(args))
        print(json.dumps(_redacted(cfg), indent=2, default=str))
    return 0


def _redacted(cfg: config_module.Config) -> dict[str, Any]:
    return {
        "source": cfg.source,
        "state_dir": str(cfg.state_dir),
        "settings": _shown(cfg.settings),
        "pipelines": [_shown(p) for p in cfg.pipelines],
    }


def _shown(settings: Any) -> dict[str, Any]:
    """A settings dataclass as JSON-ready data: secrets (and a password in a URL) as
    ``***``, sets as sorted lists; internal state that is not a setting left out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        if "help" not in f.metadata:
            continue
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[f.name] = _shown(value)
        elif f.metadata.get("secret") and value:
            out[f.name] = "***"
        else:
            out[f.name] = _plain(redact_urls(value))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:  # mixed types
            return sorted(value, key=str)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict | MappingProxyType):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
