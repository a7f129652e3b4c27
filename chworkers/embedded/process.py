"""Run the endpoint in a child process and control it: start, stop, kill, restart.

This is what tests and the daemon use::

    with EmbeddedClickHouse("/tmp/data") as ch:
        client = clickhouse_connect.get_client(host=ch.host, port=ch.port)

The child is ``python -m chworkers embedded``. A restart reuses the data directory and
the port the first start got, so clients configured with the URL keep working; a kill
(SIGKILL) is how fault tests simulate a crash.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from chworkers import timeouts
from chworkers.embedded.cli import READY_PREFIX
from chworkers.embedded.options import DEFAULT_MAX_SESSIONS, PASSWORD_ENV, EmbeddedOptions
from chworkers.errors import EmbeddedError
from chworkers.http.limits import HttpLimits
from chworkers.settings import flags

log = logging.getLogger(__name__)


class EmbeddedClickHouse:
    """The embedded ClickHouse endpoint in a child process.

    ``port=0`` picks a free port on the first start; later starts reuse it.
    ``user``/``password`` make the endpoint require those credentials. With
    ``exit_with_parent`` (the default) the child stops by itself when this process dies,
    even by SIGKILL, so its data directory is not left locked. The child's log
    goes to ``log_path`` if given (else to a private temporary file; see :meth:`log`).
    ``limits`` bound its connections (backlog, max_connections, timeouts),
    ``max_sessions`` the HTTP sessions it keeps at once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str | None = None,
        password: str | None = None,
        startup_timeout: float = 60.0,
        log_path: str | os.PathLike[str] | None = None,
        log_level: str = "INFO",
        log_format: str = "text",
        exit_with_parent: bool = True,
        limits: HttpLimits | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        self.path = Path(path)
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path is not None else None
        #: The child's log level and format (``--log-level``, ``--log-format``), from its
        #: next start on when changed.
        self.log_level = log_level
        self.log_format = log_format
        self.exit_with_parent = exit_with_parent
        self.limits = limits or HttpLimits()
        self.max_sessions = max_sessions
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<EmbeddedClickHouse {self.url} path={self.path} {state}>"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def exit_status(self) -> str | None:
        """How the last child ended ("exit code 1", "killed by SIGKILL"); None while it
        runs or before it started."""
        code = None if self._proc is None else self._proc.poll()
        if code is None:
            return None
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def start(self, *, cancel: threading.Event | None = None) -> Self:
        """Start the child and wait until it serves; raises EmbeddedError if it cannot.

        Setting ``cancel`` (from another thread) gives up on a start in progress: the
        child is killed and EmbeddedError raised within a fraction of a second.
        """
        if self.running:
            raise EmbeddedError(f"the endpoint is already running (pid {self.pid})")
        if self._log is None:
            if self.log_path is not None:
                self._log = open(self.log_path, "ab")  # noqa: SIM115
            else:
                self._log = tempfile.TemporaryFile(prefix="chworkers-embedded-")  # noqa: SIM115
        options = EmbeddedOptions(
            path=str(self.path),
            host=self.host,
            port=self.port,
            user=self.user,  # the password goes in the environment, never in argv
            exit_with_parent=os.getpid() if self.exit_with_parent else None,
            limits=self.limits,
            max_sessions=self.max_sessions,
        )
        cmd = [sys.executable, "-m", "chworkers", "--log-level", self.log_level]
        cmd += ["--log-format", self.log_format, "embedded"]
        cmd += flags.arguments(options)
        env = dict(os.environ)
        env.pop(PASSWORD_ENV, None)
        if self.password is not None:
            env[PASSWORD_ENV] = self.password
        # A session of its own: Ctrl-C in a terminal reaches the parent, which decides
        # when to stop the endpoint (after draining into it); --exit-with-parent stops
        # the child if the parent dies without doing so.
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        # From here on, whatever goes wrong (no ready line, a timeout, an interrupt)
        # takes the child down with it: a child left running would hold the data
        # directory's lock and the port, and the next start would fail on them.
        try:
            url = self._wait_ready(proc, cancel)
            port = int(url.rsplit(":", 1)[1])
        except BaseException:
            _reap(proc)
            raise
        self._proc = proc
        self.port = port
        log.debug("embedded endpoint %s started (pid %s)", url, proc.pid)
        return self

    def _wait_ready(self, proc: subprocess.Popen[bytes], cancel: threading.Event | None) -> str:
        """The URL from the child's ready line; EmbeddedError if it exits or times out."""
        assert proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        buf = b""
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                while True:
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        line = raw.decode("utf-8", "replace")
                        if line.startswith(READY_PREFIX):
                            return line[len(READY_PREFIX) :].split()[0]
                        log.debug("embedded endpoint said before it was ready: %s", line)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise EmbeddedError(
                            f"the embedded endpoint did not start within {self.startup_timeout} "
                            f"s: {self._tail()}",
                            path=str(self.path),
                        )
                    if cancel is not None and cancel.is_set():
                        raise EmbeddedError(
                            "the embedded endpoint's start was cancelled", path=str(self.path)
                        )
                    if not sel.select(timeout=min(left, 0.2)):
                        continue
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    buf = (buf + chunk)[-65536:]
        finally:
            proc.stdout.close()
        try:
            code: int | None = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        what = f"exit code {code}" if code is not None else "it closed its output"
        raise EmbeddedError(
            f"the embedded endpoint did not start ({what}): {self._tail()}", path=str(self.path)
        )

    def tail(self, limit: int = 2000) -> str:
        """The last lines of the child's log (at most ``limit`` characters)."""
        return self._tail(limit)

    def _tail(self, limit: int = 2000) -> str:
        text = self.log()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return "\n".join(lines[-10:])[-limit:] or "(no output)"

    def log(self) -> str:
        """What the child wrote to its log so far."""
        if self._log is None:
            return ""
        self._log.flush()
        if self.log_path is not None:  # opened for appending, which cannot be read back
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        with open(self._log.fileno(), "rb", closefd=False) as f:
            f.seek(0)
            return f.read().decode("utf-8", "replace")

    def stats(self, reset: bool = False) -> dict[str, int]:
        """The endpoint's counters (``GET /embedded/stats``), e.g. the most query requests
        it ran at once, ``max_requests_in_flight``; ``reset`` restarts that maximum."""
        url = f"{self.url}/embedded/stats" + ("?reset=1" if reset else "")
        with urllib.request.urlopen(url, timeout=30) as resp:
            data: dict[str, int] = json.loads(resp.read())
        return data

    def stop(self, timeout: float | None = 30.0) -> int | None:
        """SIGTERM and wait for a clean exit (SIGKILL after ``timeout`` seconds; None: no
        limit); the exit code."""
        limit = timeouts.resolve(timeout, None)
        if self._proc is None:
            return None
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                log.warning("embedded endpoint pid %s ignored SIGTERM; killing it", proc.pid)
                proc.kill()
        return proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed or closed."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def restart(self, timeout: float | None = 30.0) -> Self:
        """Stop (if running) and start again on the same data directory and port."""
        self.stop(timeout)
        return self.start()

    def close(self) -> None:
        """Stop the child and release the log file."""
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill a child that failed to start and wait for it: it must not outlive start()."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignored
        log.error("embedded endpoint pid %s survived SIGKILL", proc.pid)
