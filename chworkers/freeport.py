"""A free TCP port for a server that is started later, chosen where no client takes it.

Binding port 0 gives a port from the kernel's ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default), the same range
the kernel takes the local ports of outgoing connections from. Between closing that
socket and the server's own bind, any connection on the machine may be given the
port, and the server then fails with "Address already in use" (CI saw a redis-server
do so). Worse, a server that is restarted on a fixed port (the embedded ClickHouse
child keeps its port across restarts) can find it held by a client that connected to
that very port while the server was down: Linux may give such a connection the port
it connects to, and it then talks to itself (TCP simultaneous open).

:func:`free_port` therefore picks, at random, a port outside the ephemeral range that
nothing listens on now, and :func:`bind_free` binds a server's socket to one (the
embedded endpoint asked for port 0); only when the range leaves no room (a tuned
kernel) do they fall back to port 0.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["bind_free", "free_port"]

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000  # below: well-known and registered services more often listen
_HIGHEST = 65535
_TRIES = 64


def _ephemeral() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default
    where it cannot be read)."""
    try:
        low, high = _RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _candidates() -> list[range]:
    low, high = _ephemeral()
    spans = [range(_LOWEST, min(low, _HIGHEST + 1)), range(max(high + 1, _LOWEST), _HIGHEST + 1)]
    return [span for span in spans if len(span) > 0]


def bind_free(sock: socket.socket, host: str) -> int:
    """Bind ``sock`` on ``host`` to a free port outside the ephemeral range (port 0
    when none is found) and answer the port: for a server that binds at once."""
    spans = _candidates()
    weights = [len(span) for span in spans]
    for _ in range(_TRIES if spans else 0):
        port = random.choice(random.choices(spans, weights)[0])
        try:
            sock.bind((host, port))
        except OSError:
            continue
        return port
    sock.bind((host, 0))
    return int(sock.getsockname()[1])


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on now, outside the ephemeral range: for
    a server started later (another process)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        return bind_free(sock, host)
