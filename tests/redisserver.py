"""A real redis-server for tests: Debian's package, installed on first use when missing,
started on a free loopback port with its own data directory, always stopped.

Used by tests/test_redis_source.py, tests/faults/ and benchmarks/bench_brokers.py;
:class:`RedisClusterServers` makes three of them a Redis Cluster.
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

    def __init__(self, directory: Path, *, port: int = 0, extra: tuple[str, ...] = ()) -> None:
        self.binary = find_redis_server()
        self.extra = extra
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
                *self.extra,
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

    def add_entries(self, bodies: list[bytes], stream: str = "ev") -> None:
        """One entry per body, as its ``data`` field (tests/brokerfeeds.py makes them)."""
        client = self.client()
        try:
            pipe = client.pipeline(transaction=False)
            for body in bodies:
                pipe.xadd(stream, {"data": body})
            pipe.execute()
        finally:
            client.close()

    def settled(self, stream: str = "ev") -> bool:
        """Nothing pending in the stream's groups, no manifest left beside the stream."""
        client = self.client()
        try:
            groups = client.xinfo_groups(stream)
            manifests = client.keys(f"{stream}:chworkers:*")
        finally:
            client.close()
        return all(g["pending"] == 0 and g["lag"] == 0 for g in groups) and not manifests

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


class RedisClusterServers:
    """Three redis-server processes made one Redis Cluster (no replicas): each node
    serves a third of the hash slots; ``url`` is the first node's (a cluster client
    finds the others)."""

    def __init__(self, directory: Path, nodes: int = 3) -> None:
        # The cluster bus on a port of its own: by default it is the client port + 10000,
        # out of range for the free ports above 55535.
        self.bus = [free_port() for _ in range(nodes)]
        self.servers = [
            RedisServer(
                directory / f"node{i}",
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(self.bus[i]),
                    "--cluster-node-timeout",
                    "5000",
                ),
            )
            for i in range(nodes)
        ]

    @property
    def url(self) -> str:
        return self.servers[0].url

    def start(self) -> None:
        for server in self.servers:
            server.start()
        step = 16384 // len(self.servers)
        clients = [server.client() for server in self.servers]
        try:
            for i, client in enumerate(clients):
                last = 16383 if i == len(clients) - 1 else (i + 1) * step - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
            for server, bus in zip(self.servers[1:], self.bus[1:], strict=True):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", server.port, bus)
            deadline = time.monotonic() + 30
            while not all(
                c.execute_command("CLUSTER", "INFO").decode().count("cluster_state:ok")
                and int(
                    c.execute_command("CLUSTER", "INFO")
                    .decode()
                    .split("cluster_known_nodes:")[1]
                    .split()[0]
                )
                == len(self.servers)
                for c in clients
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not come up within 30 s")
                time.sleep(0.1)
        finally:
            for client in clients:
                client.close()

    def client(self) -> Any:
        import redis.cluster

        return redis.cluster.RedisCluster.from_url(self.url, socket_timeout=30)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
