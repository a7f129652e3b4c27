"""A port picked for a server started later is never one the kernel hands to clients.

CI failed once on a redis-server that could not bind the port chosen for it ("Address
already in use"): the port came from binding port 0, that is from the ephemeral range
the kernel also gives outgoing connections, and one took it in between. The embedded
ClickHouse child, restarted on its fixed port, could likewise find it held by a client
(even by a worker's connection to that very port, which Linux can connect to itself).
:func:`chworkers.freeport.free_port` picks outside that range.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import chworkers.freeport
from chworkers.freeport import free_port


def ephemeral() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def test_ports_are_outside_the_ephemeral_range_and_free() -> None:
    clients = ephemeral()
    ports = {free_port("127.0.0.1") for _ in range(200)}
    assert not ports & set(clients)
    assert len(ports) > 150  # random: two test processes seldom pick the same one
    for port in list(ports)[:20]:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))  # nothing listens there


def test_a_listening_port_is_never_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        # Only one candidate outside the range: the busy port, so the fallback answers.
        monkeypatch.setattr(chworkers.freeport, "_LOWEST", busy)
        monkeypatch.setattr(chworkers.freeport, "_ephemeral", lambda: (busy + 1, 65535))
        assert free_port("127.0.0.1") != busy


def test_a_kernel_without_room_outside_the_range_falls_back_to_port_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = tmp_path / "ip_local_port_range"
    whole.write_text("1024\t65535\n")
    monkeypatch.setattr(chworkers.freeport, "_RANGE_FILE", whole)
    port = free_port("127.0.0.1")
    assert 1024 <= port <= 65535
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))


def test_the_embedded_endpoint_asked_for_any_port_listens_outside_the_range(
    tmp_path: Path,
) -> None:
    """Restarted on its port while clients knock on it, the endpoint must find it free."""
    from chworkers.embedded import EmbeddedClickHouse

    with EmbeddedClickHouse(tmp_path / "ch", port=0) as endpoint:
        assert endpoint.port not in ephemeral()
        first = endpoint.port
        endpoint.stop()
        endpoint.start()  # later starts keep the port
        assert endpoint.port == first
