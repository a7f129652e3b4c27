"""Commands sent ahead on a Redis connection of their own, their replies taken later.

The Redis source's reads and manifest writes go this way, each on a connection of its
own (docs/brokers.md, "Measured"): the next read is sent as the reply of the last one
comes in, before the source frames its entries, and a batch's manifest while the source
batches the next ones, so the source and Redis work at the same time instead of taking
turns, and a round trip is no longer paid per command. Redis
answers a connection's commands in the order they were sent, so the replies are taken in
that order: taking one takes (and keeps) those sent before it.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from chworkers import gcpause

__all__ = ["Ahead", "Reply", "borrow", "pack", "transaction"]


class Reply:
    """The reply to one command sent ahead: :meth:`Ahead.take` it. ``then``: what its
    value is made into as soon as it is read (whoever reads it), with the collector
    paused (chworkers/gcpause.py): a reply of many entries becomes what the source keeps
    of it, its lists freed before anything traverses them."""

    __slots__ = ("done", "error", "then", "value")

    def __init__(self, then: Callable[[Any], Any] | None = None) -> None:
        self.done = False
        self.value: Any = None
        self.error: Exception | None = None
        self.then = then


class Ahead:
    """One connection of the pool ``pool()`` gives (asked again after each reset: in a
    cluster, the stream's node may have changed), kept for commands sent ahead."""

    def __init__(self, pool: Callable[[], Any]) -> None:
        self._pools = pool
        self._pool: Any = None
        self._connection: Any = None  # a redis.Connection (its methods are untyped)
        self._sent: deque[Reply] = deque()
        #: Connections opened so far: a reply on a later one than a command's may come
        #: from a Redis that lost what that command did (a failover, a restart).
        self.opened = 0

    def send(self, *args: Any, then: Callable[[Any], Any] | None = None) -> Reply:
        """Send a command now; raises redis-py's errors (then nothing is outstanding).
        ``then``: see :class:`Reply`."""
        import redis

        try:
            self._open().send_command(*args)
        except redis.RedisError:
            self.reset()
            raise
        reply = Reply(then)
        self._sent.append(reply)
        return reply

    def take(self, reply: Reply) -> Any:
        """``reply``'s value (raised when Redis answered an error), reading the replies
        sent before it first. A connection that fails fails every reply outstanding."""
        import redis

        while not reply.done:
            head = self._sent[0]
            with gcpause.paused() if head.then is not None else contextlib.nullcontext():
                try:
                    head.value = self._connection.read_response()
                except redis.ResponseError as exc:  # an error reply: the connection is fine
                    head.error = exc
                except redis.RedisError:
                    self.reset()
                    raise
                # Read whole: no longer outstanding, whatever ``then`` does (it may send
                # the next command, and a failure of that send resets the connection).
                self._sent.popleft()
                if head.then is not None and head.error is None:
                    try:
                        head.value = head.then(head.value)
                    except Exception as exc:  # the connection is in step: this reply failed
                        head.error = exc
            head.done = True
        if reply.error is not None:
            raise reply.error
        return reply.value

    def wait(self, reply: Reply, timeout: float) -> None:
        """Take the replies sent before ``reply``, then wait up to ``timeout`` seconds
        (and the connection's socket timeout) for the first bytes of ``reply``: what
        :meth:`take` then waits for is the rest of it, on its way."""
        import redis

        while self._sent and self._sent[0] is not reply:
            self.take(self._sent[0])
        if reply.done:
            return
        try:
            self._connection.can_read(timeout + (self._connection.socket_timeout or 0))
        except redis.RedisError:
            self.reset()
            raise

    def outstanding(self) -> int:
        return len(self._sent)

    def reset(self) -> None:
        """Drop the connection (after a failure its replies cannot be trusted): the
        replies outstanding fail; the next command opens a new one."""
        import redis

        for reply in self._sent:
            reply.done, reply.error = True, redis.ConnectionError("the connection was reset")
        self._sent.clear()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.deregister_connect_callback(self._reconnected)
            connection.disconnect()
            self._pool.release(connection)

    def _open(self) -> Any:
        if self._connection is None:
            self._pool = self._pools()
            self._connection = borrow(self._pool)
            self.opened += 1
            # redis-py connects a connection again by itself when something closed it
            # between two commands (a pool disconnecting the connections in use).
            self._connection.register_connect_callback(self._reconnected)
        return self._connection

    def _reconnected(self, connection: Any) -> None:
        self.opened += 1


def borrow(pool: Any) -> Any:
    """A connection of a redis-py connection pool (``pool.release`` it)."""
    try:
        return pool.get_connection()
    except TypeError:  # redis-py before 5.3 wants a command's name
        return pool.get_connection("XREADGROUP")


def pack(connection: Any, commands: list[tuple[Any, ...]]) -> Any:
    """Commands in Redis's protocol, for ``connection.send_packed_command``: packed by
    hiredis when it is there, in a quarter of the time redis-py's packing takes around it
    (that was most of what an acknowledgement of 5,000 ids cost the daemon)."""
    try:
        import hiredis
    except ImportError:  # the source works without it (slower: redisentries.py)
        return connection.pack_commands(commands)
    return [b"".join(hiredis.pack_command(command) for command in commands)]


def transaction(pool: Any, *commands: tuple[Any, ...]) -> list[Any]:
    """``commands`` in ``MULTI``/``EXEC`` on a connection of ``pool`` (in a cluster, the
    pool of the node that serves their keys: one hash slot), sent at once; ``EXEC``'s
    replies. No script: a script's Lua costs Redis more than its commands do (the
    acknowledgement of 5,000 ids: about 3 us per id in a script, 1 us in a transaction).
    Raises the first error Redis answered (``MOVED`` and the like), after reading every
    reply: the connection stays in step."""
    import redis

    connection = borrow(pool)
    try:
        connection.send_packed_command(
            pack(connection, [("MULTI",), *commands, ("EXEC",)]), check_health=False
        )
        replies: list[Any] = []
        error: redis.ResponseError | None = None
        for _ in range(len(commands) + 2):
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as exc:
                error = error or exc
                replies.append(None)
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
    if error is not None:
        raise error
    return list(replies[-1])
