"""A real redis-server for tests: Debian's package, installed on first use when missing,
started on a free loopback port with its own data directory, always stopped.

Used by tests/test_redis_source.py, tests/faults/ and benchmarks/bench_brokers.py;
:class:`RedisClusterServers` makes three of them a Redis Cluster.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from debpackages import ProgramUnavailable, find_program, free_port
from serverprocess import ServerProcess


class RedisUnavailable(ProgramUnavailable):
    """redis-server is missing and could not be installed."""


def find_redis_server() -> str:
    """The path of redis-server, apt-get installing Debian's package if it is missing."""
    return find_program("redis-server", "redis-server", RedisUnavailable)


class RedisServer(ServerProcess):
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
                # A replica's first sync at once (the default waits 5 s for more replicas).
                "--repl-diskless-sync-delay",
                "0",
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

    def pending(self, stream: str = "ev", group: str = "chworkers") -> int:
        """Entries of ``stream`` delivered to ``group`` and not acknowledged yet."""
        client = self.client()
        try:
            return int(client.xpending(stream, group)["pending"])
        finally:
            client.close()

    def delete(self, key: str) -> int:
        """Delete ``key`` (as a failover or an expiry loses it); how many keys went."""
        client = self.client()
        try:
            return int(client.delete(key))
        finally:
            client.close()

    def settled(self, stream: str = "ev") -> bool:
        """Nothing pending in the stream's groups, no manifest left beside the stream."""
        client = self.client()
        try:
            groups = client.xinfo_groups(stream)
            manifests = client.keys(f"{stream}:chworkers:*:manifest*")
        finally:
            client.close()
        return all(g["pending"] == 0 and g["lag"] == 0 for g in groups) and not manifests


class RedisClusterServers:
    """Redis Cluster of real redis-server processes: ``nodes`` primaries, each serving
    an equal share of the hash slots, and one replica for each primary whose index is in
    ``replicas`` (``servers[nodes:]``, in that order). ``url`` is the first node's (a
    cluster client finds the others). ``node_timeout`` (ms): how long a primary may be
    unreachable before its replica takes over."""

    def __init__(
        self,
        directory: Path,
        nodes: int = 3,
        *,
        replicas: tuple[int, ...] = (),
        node_timeout: int = 5000,
    ) -> None:
        self.primaries = nodes
        self.replica_of = list(replicas)
        count = nodes + len(replicas)
        # The cluster bus on a port of its own: by default it is the client port + 10000,
        # out of range for the free ports above 55535.
        self.bus = [free_port() for _ in range(count)]
        self.servers = [
            RedisServer(
                directory / f"node{i}",
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(self.bus[i]),
                    "--cluster-node-timeout",
                    str(node_timeout),
                ),
            )
            for i in range(count)
        ]

    @property
    def url(self) -> str:
        return self.servers[0].url

    def start(self) -> None:
        for server in self.servers:
            server.start()
        step = 16384 // self.primaries
        clients = [server.client() for server in self.servers]
        try:
            for i, client in enumerate(clients[: self.primaries]):
                last = 16383 if i == self.primaries - 1 else (i + 1) * step - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
            for server, bus in zip(self.servers[1:], self.bus[1:], strict=True):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", server.port, bus)
            self._wait(clients, lambda c: self._known(c) == len(self.servers), "met")
            for offset, primary in enumerate(self.replica_of):
                replica = clients[self.primaries + offset]
                # A replica can follow a primary only once it knows it (gossip).
                self._wait(
                    [replica],
                    lambda c, p=primary: (
                        self.node_id(p).encode() in c.execute_command("CLUSTER", "NODES")
                    ),
                    "a replica's primary known",
                )
                replica.execute_command("CLUSTER", "REPLICATE", self.node_id(primary))
            self._wait(
                clients,
                lambda c: (
                    b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                    and self._known(c) == len(self.servers)
                ),
                "up",
            )
            for offset in range(len(self.replica_of)):
                self._wait(
                    [clients[self.primaries + offset]],
                    lambda c: c.info("replication").get("master_link_status") == "up",
                    "replicating",
                )
        finally:
            for client in clients:
                client.close()

    @staticmethod
    def _known(client: Any) -> int:
        info = client.execute_command("CLUSTER", "INFO").decode()
        return int(info.split("cluster_known_nodes:")[1].split()[0])

    @staticmethod
    def _wait(clients: list[Any], ready: Any, what: str) -> None:
        deadline = time.monotonic() + 30
        while not all(ready(c) for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster was not {what} within 30 s")
            time.sleep(0.1)

    def node_id(self, index: int) -> str:
        client = self.servers[index].client()
        try:
            return str(client.execute_command("CLUSTER", "MYID").decode())
        finally:
            client.close()

    def serving(self, key: str) -> int:
        """The index of the server that serves ``key``'s slot now (asked of a live one)."""
        import redis.crc

        slot = redis.crc.key_slot(key.encode())
        ports = {s.port: i for i, s in enumerate(self.servers)}
        for server in self.servers:
            if server.proc is None or server.proc.poll() is not None:
                continue
            client = server.client()
            try:
                for first, last, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        return ports[int(primary[1])]
            finally:
                client.close()
        raise RuntimeError(f"no live node serves the slot of {key!r}")

    def move_slot(self, key: str, to: int, *, pause: float = 0.0) -> None:
        """Reshard by hand, as ``redis-cli --cluster reshard`` does: ``key``'s slot
        migrating from its primary to primary ``to``, its keys moved one by one with
        ``MIGRATE`` (``pause`` seconds before each: clients meanwhile get ``ASK`` and
        ``TRYAGAIN``), then the slot given to ``to`` on every primary."""
        source = self.serving(key)
        self.begin_move(key, to)
        self.end_move(key, source, to, pause=pause)

    def begin_move(self, key: str, to: int) -> None:
        """``key``'s slot marked migrating to primary ``to`` (its keys not moved yet)."""
        import redis.crc

        slot, source = redis.crc.key_slot(key.encode()), self.serving(key)
        src, dst = self.servers[source].client(), self.servers[to].client()
        try:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(to))
        finally:
            src.close()
            dst.close()

    def migrate(self, keys: list[bytes], source: int, to: int) -> None:
        src = self.servers[source].client()
        try:
            for k in keys:
                src.execute_command("MIGRATE", "127.0.0.1", self.servers[to].port, k, 0, 10_000)
        finally:
            src.close()

    def end_move(self, key: str, source: int, to: int, *, pause: float = 0.0) -> None:
        """The rest of ``key``'s slot's keys moved from ``source`` to ``to``, one by one
        (``pause`` seconds before each), then the slot given to ``to`` everywhere."""
        import redis.crc

        slot = redis.crc.key_slot(key.encode())
        src = self.servers[source].client()
        try:
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10):
                for k in keys:
                    time.sleep(pause)
                    self.migrate([k], source, to)
        finally:
            src.close()
        to_id = self.node_id(to)
        for i in range(self.primaries):
            if self.servers[i].proc is not None and self.servers[i].proc.poll() is None:
                client = self.servers[i].client()
                try:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", to_id)
                finally:
                    client.close()

    def client(self) -> Any:
        import redis.cluster

        return redis.cluster.RedisCluster.from_url(self.url, socket_timeout=30)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
