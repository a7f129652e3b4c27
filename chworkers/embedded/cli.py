"""``chworkers embedded``: serve the ClickHouse HTTP interface over chDB.

Its flags are derived from :class:`~chworkers.embedded.options.EmbeddedOptions`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from chworkers.embedded.options import PASSWORD_ENV, EmbeddedOptions
from chworkers.errors import ConfigError
from chworkers.pids import alive
from chworkers.settings import flags

if TYPE_CHECKING:
    # The endpoint's machinery is imported when the subcommand runs, not when the
    # command line registers it (``chworkers run`` never needs it).
    from chworkers.embedded.handler import Credentials
    from chworkers.embedded.server import EmbeddedServer

#: The line printed on stdout once the endpoint accepts connections.
READY_PREFIX = "chworkers embedded: serving "

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "embedded",
        help="serve the ClickHouse HTTP interface from an embedded chDB",
        description=(
            "Serve the ClickHouse HTTP interface on HOST:PORT from chDB (ClickHouse "
            "in-process) with its data in DIR. Prints the URL once it is ready; SIGTERM "
            "or Ctrl-C stops it cleanly."
        ),
    )
    flags.add_flags(p, EmbeddedOptions)
    p.set_defaults(handler=run)


def credentials_from(options: EmbeddedOptions) -> Credentials | None:
    """The credentials the endpoint requires: ``--user`` and the password from
    ``--password`` (deprecated), ``--password-file`` or :data:`PASSWORD_ENV`."""
    password = options.password
    if password is not None:
        log.warning(
            "--password is deprecated: any user can read it in the process list; set %s "
            "or use --password-file",
            PASSWORD_ENV,
        )
    if options.password_file is not None:
        try:
            lines = Path(options.password_file).read_text().splitlines()
            password = lines[0] if lines else ""
        except OSError as exc:
            raise ConfigError(
                f"cannot read the password file {options.password_file}: {exc.strerror}",
                key="password_file",
                value=options.password_file,
                expected="a readable file whose first line is the password",
                source="flag",
            ) from None
    if password is None:
        password = os.environ.get(PASSWORD_ENV)
    if options.user is None and password is None:
        return None
    from chworkers.embedded.handler import Credentials

    return Credentials(options.user or "default", password or "")


def run(args: argparse.Namespace) -> int:
    from chworkers.embedded.server import EmbeddedServer

    options = flags.from_flags(EmbeddedOptions, args)
    assert options.path is not None  # required: validated
    server = EmbeddedServer(
        Path(options.path),
        options.host,
        options.port,
        credentials=credentials_from(options),
        limits=options.limits,
        max_sessions=options.max_sessions,
    )
    server.start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.request_stop()

    signal.set_wakeup_fd(server.wakeup_fd)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if options.exit_with_parent:
        threading.Thread(
            target=_watch_parent,
            args=(options.exit_with_parent, server),
            name="parent-watch",
            daemon=True,
        ).start()
    try:
        print(f"{READY_PREFIX}{server.url} (data in {server.path})", flush=True)
    except OSError:
        # Nobody reads the ready line: the parent died while we started. Stop in order
        # (serve_forever returns at once and shuts the engine down), and send what is
        # still buffered for stdout nowhere, so that the exit's flush cannot fail too.
        log.warning("the parent is gone before the endpoint was ready; stopping")
        _discard_stdout()
        server.request_stop()
        server.serve_forever()
        return 1
    server.serve_forever()
    sys.stdout.flush()
    return 0


def _discard_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _watch_parent(pid: int, server: EmbeddedServer, interval: float = 0.5) -> None:
    while True:
        time.sleep(interval)
        if not alive(pid):
            log.warning("the parent process %d is gone; stopping", pid)
            server.request_stop()
            return
