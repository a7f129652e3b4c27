"""Records for the broker sources' tests, cut into the bodies of the Redis entries or
NATS messages that carry them (``RedisServer.add_entries``, ``NatsServer.publish``)."""

from __future__ import annotations

from collections.abc import Callable


def numbered(i: int) -> bytes:
    """Record ``i`` of the source tests' table (``n UInt64, s String``)."""
    return b'{"n":%d,"s":"r%d"}\n' % (i, i)


def bodies(
    start: int, stop: int, per: int, record: Callable[[int], bytes] = numbered
) -> list[bytes]:
    """Records ``start`` .. ``stop - 1``, ``per`` to a body."""
    return [
        b"".join(record(i) for i in range(first, min(stop, first + per)))
        for first in range(start, stop, per)
    ]
