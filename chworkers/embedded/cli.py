"""``chworkers embedded``: serve the ClickHouse HTTP interface over chDB."""

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
from typing import Any

from chworkers.embedded.handler import Credentials
from chworkers.embedded.server import EmbeddedServer
from chworkers.errors import ConfigError
from chworkers.http.limits import HttpLimits
from chworkers.pids import alive

#: Environment variable the password may come from (kept out of ``ps`` output).
PASSWORD_ENV = "CHWORKERS_EMBEDDED_PASSWORD"
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
    p.add_argument("--path", required=True, type=Path, metavar="DIR", help="data directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument(
        "--port", default=8123, type=int, help="port (default: 8123; 0 picks a free one)"
    )
    p.add_argument("--user", help="require this user name (default: no authentication)")
    p.add_argument(
        "--password",
        help=f"deprecated: shows the password to every user in the process list; set "
        f"{PASSWORD_ENV} or use --password-file instead",
    )
    p.add_argument("--password-file", type=Path, help="read the password from this file")
    HttpLimits.add_arguments(p)
    p.add_argument(
        "--exit-with-parent",
        type=int,
        metavar="PID",
        help="stop cleanly when process PID is gone (for a program that runs the endpoint "
        "as its child, so that a kill -9 of the program does not leave the data locked)",
    )
    p.set_defaults(handler=run)


def credentials_from(args: argparse.Namespace) -> Credentials | None:
    password = args.password
    if password is not None:
        log.warning(
            "--password is deprecated: any user can read it in the process list; set %s "
            "or use --password-file",
            PASSWORD_ENV,
        )
    if args.password_file is not None:
        try:
            lines = args.password_file.read_text().splitlines()
            password = lines[0] if lines else ""
        except OSError as exc:
            raise ConfigError(
                f"cannot read the password file {args.password_file}: {exc.strerror}",
                key="password_file",
                value=str(args.password_file),
                expected="a readable file whose first line is the password",
                source="flag",
            ) from None
    if password is None:
        password = os.environ.get(PASSWORD_ENV)
    if args.user is None and password is None:
        return None
    return Credentials(args.user or "default", password or "")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ConfigError(
            f"--port {args.port} is not a TCP port",
            key="port",
            value=args.port,
            expected="an integer from 0 to 65535",
            source="flag",
        )
    server = EmbeddedServer(
        args.path,
        args.host,
        args.port,
        credentials=credentials_from(args),
        limits=HttpLimits.from_arguments(args),
    )
    server.start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.request_stop()

    signal.set_wakeup_fd(server.wakeup_fd)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.exit_with_parent:
        threading.Thread(
            target=_watch_parent,
            args=(args.exit_with_parent, server),
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
