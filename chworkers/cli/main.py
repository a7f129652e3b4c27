"""The ``chworkers`` command line.

Each subcommand lives next to the concept it drives and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` (a function taking
the parsed namespace and returning an exit code). Flags that set a setting are derived
from its declaration (:mod:`chworkers.settings.flags`); ``--log-level`` and
``--log-format`` here are :class:`~chworkers.ops.logs.LogSettings`'. This module only assembles them,
configures logging (the library never does) and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from chworkers._version import __version__
from chworkers.bench import cli as bench_cli
from chworkers.cli import commands
from chworkers.embedded import cli as embedded_cli
from chworkers.errors import ChworkersError, ConfigError, WorkerBootError
from chworkers.ops import logs
from chworkers.ops.logs import LogSettings
from chworkers.settings import flags

#: Modules that contribute a subcommand, in the order ``--help`` lists them (imported
#: as any module is, so that the layers contract sees them).
SUBCOMMAND_MODULES = (commands, embedded_cli, bench_cli)

#: Exit codes (documented in the README).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_WORKER_BOOT = 4  # workers die at start: restarting will not help
EXIT_INTERRUPTED = 130

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chworkers",
        description="Reliable, fast ingestion into ClickHouse.",
    )
    parser.add_argument("--version", action="version", version=f"chworkers {__version__}")
    flags.add_flags(parser, LogSettings, prefix="log.", config_file=True)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    # Until a command has read its config (log.level, log.format), the flags or defaults.
    given = flags.given(args)
    logs.configure(
        given.get("log.level", LogSettings.level), given.get("log.format", LogSettings.format)
    )
    try:
        code: int = handler(args)
    except ConfigError as exc:
        print(f"chworkers: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except WorkerBootError as exc:
        print(f"chworkers: {exc}", file=sys.stderr)
        return EXIT_WORKER_BOOT
    except ChworkersError as exc:
        print(f"chworkers: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code
