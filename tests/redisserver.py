"""A real redis-server for tests: Debian's package, installed on first use when missing,
started on a free loopback port with its own data directory, always stopped.

Used by tests/test_redis_source.py, tests/faults/ and benchmarks/bench_brokers.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from debpackages import ProgramUnavailable, find_program, free_port


class RedisUnavailable(ProgramUnavailable):
    """redis-server is missing and could not be installed."""


def find_redis_server() -> str:
    """The path of redis-server, apt-get installing Debian's package if it is missing."""
    return find_program("redis-server", "redis-server", RedisUnavailable)


class RedisServer:
    """One redis-server process with AOF (``appendfsync always``) in ``directory``."""

    def __init__(self, directory: Path, *, port: int = 0) -> None:
        self.binary = find_redis_server()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.client().ping():
                    return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "redis-server did not start: "
                        + (self.directory / "redis.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.05)

    def client(self, **kwargs: Any) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=30, **kwargs)

    def kill(self) -> None:
        """SIGKILL (what survives is what was fsync'd)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
