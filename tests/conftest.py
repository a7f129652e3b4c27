"""Shared fixtures: the embedded ClickHouse endpoint and clients for it.

``endpoint`` is one embedded endpoint (a child process on a free port, data in a
temporary directory) for the whole test session, always stopped at the end. Tests
isolate themselves with ``database``, a fresh database per test, and talk to it with
``ch_client``, a real clickhouse-connect HTTP client. Tests that kill or restart an
endpoint start their own with :class:`chworkers.EmbeddedClickHouse` instead of
touching the shared one.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from chclients import make_client, unique_name
from clickhouse_connect.driver.client import Client
from faultproxy import FaultProxy
from natsserver import NatsServer, NatsUnavailable
from redisserver import RedisServer, RedisUnavailable
from sdnotify import Receiver

from chworkers.embedded import EmbeddedClickHouse

if TYPE_CHECKING:
    from chworkers.workers.supervisor import Supervisor


@pytest.fixture(scope="session")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedClickHouse]:
    """The session's embedded ClickHouse endpoint (``.url``, ``.host``, ``.port``)."""
    ch = EmbeddedClickHouse(tmp_path_factory.mktemp("embedded") / "data")
    ch.start()
    try:
        yield ch
    finally:
        ch.close()


@pytest.fixture(scope="session")
def shard_endpoints(
    endpoint: EmbeddedClickHouse, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EmbeddedClickHouse, ...]]:
    """Three embedded endpoints to use as the three shards of a cluster: the session's
    ``endpoint`` and two more, started on first use and stopped at the end."""
    others: list[EmbeddedClickHouse] = []
    try:
        for index in (1, 2):
            ch = EmbeddedClickHouse(tmp_path_factory.mktemp(f"shard{index}") / "data")
            others.append(ch)
            ch.start()
        yield (endpoint, *others)
    finally:
        for ch in others:
            ch.close()


@pytest.fixture
def shard_database(
    shard_endpoints: tuple[EmbeddedClickHouse, ...], request: pytest.FixtureRequest
) -> Iterator[str]:
    """A fresh, empty database of the same name on each of ``shard_endpoints``."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]
    name = unique_name(f"test_{base}")
    admins = [make_client(ch) for ch in shard_endpoints]
    try:
        for admin in admins:
            admin.command(f"CREATE DATABASE `{name}`")
        yield name
    finally:
        for admin in admins:
            try:
                admin.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")
            finally:
                admin.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo what ``chworkers.ops.logs.configure`` changes in this process: the root logger's
    handlers and level, ``sys.stderr``, the exception hooks, captured warnings."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = sys.stderr, sys.excepthook, threading.excepthook
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.stderr, sys.excepthook, threading.excepthook = saved
    logging.captureWarnings(False)


@pytest.fixture
def database(endpoint: EmbeddedClickHouse, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]
    name = unique_name(f"test_{base}")
    admin = make_client(endpoint)
    admin.command(f"CREATE DATABASE `{name}`")
    try:
        yield name
    finally:
        try:
            admin.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")
        finally:
            admin.close()


@pytest.fixture
def ch_client(endpoint: EmbeddedClickHouse, database: str) -> Iterator[Client]:
    """A clickhouse-connect client whose default database is the test's own."""
    client = make_client(endpoint, database=database)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def client_factory(endpoint: EmbeddedClickHouse, database: str) -> Iterator[Any]:
    """``client_factory(**kwargs)`` makes more clients (default database: the test's)."""
    clients: list[Client] = []

    def factory(**kwargs: Any) -> Client:
        kwargs.setdefault("database", database)
        client = make_client(endpoint, **kwargs)
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        for client in clients:
            client.close()


# -- Fault injection (tests/faultproxy.py) ---------------------------------------------------


@pytest.fixture
def fault_proxy(endpoint: EmbeddedClickHouse) -> Iterator[FaultProxy]:
    """A loopback TCP proxy to ``endpoint`` that can delay, reset, drop or refuse."""
    proxy = FaultProxy((endpoint.host, endpoint.port))
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    """systemd's end of a NOTIFY_SOCKET on a path (tests/sdnotify.py)."""
    r = Receiver(str(tmp_path / "notify.sock"))
    yield r
    r.close()


@pytest.fixture
def make_sup() -> Iterator[Callable[..., Supervisor]]:
    """Starts a supervisor with the options given (``start_method="fork"`` unless they
    say otherwise); every one is stopped, not gracefully, after the test."""
    from chworkers.workers.supervisor import Supervisor

    started: list[Supervisor] = []

    def make(**kw: Any) -> Supervisor:
        kw.setdefault("start_method", "fork")
        sup = Supervisor(**kw)
        started.append(sup)
        return sup.start()

    yield make
    for sup in started:
        sup.stop(graceful=False)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server (Debian's, installed on first use) on a free loopback port with
    its own data directory; the test is skipped when it cannot be had."""
    try:
        server = RedisServer(tmp_path / "redis")
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream (Debian's, installed on first use) on a free
    loopback port with its own store directory; the test is skipped when it cannot be had."""
    try:
        server = NatsServer(tmp_path / "nats")
    except NatsUnavailable as exc:
        pytest.skip(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()
