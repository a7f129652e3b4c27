"""The JetStream source's nats-py client, with a short way in and out for the messages
of a pull and their acknowledgements (docs/brokers.md, "Measured").

nats-py hands every message of a subscription through the same road: its headers parsed
into a dict, a :class:`~nats.aio.msg.Msg` built (subject and reply decoded), the message
put on the subscription's queue, and a task of the subscription taking it off to await
the callback. For a pulled JetStream message the source needs two things: its reply
subject (its stream sequence, its delivery count, where to acknowledge it) and its
payload; a producer's headers (``Nats-Msg-Id``) are of no use to it. Profiled at steady
state, that road was most of the event loop's time. So a message of a subscription made
with :meth:`WireClient.subscribe_sink` that has an acknowledgement subject goes straight to the sink's
function, its headers unread; everything else (the pulls' statuses, other
subscriptions) takes nats-py's own road.

Acknowledging is the same: nats-py's ``publish`` checks, formats and queues one message
per call; :meth:`WireClient.publish_each` writes one payload to many subjects as one
command. Both rest on two methods of nats-py's client that are not its public API
(``_process_msg``, the parser's way in, and ``_send_command``, publish's way out); both
have kept their shape through nats-py 2.x, which ``pyproject.toml`` pins, and every NATS
test goes through them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

#: What a sink gets: a message's acknowledgement subject and its payload.
Sink = Callable[[str, bytes], None]

#: The start of a JetStream message's reply subject (statuses have none).
ACK_PREFIX = b"$JS.ACK."


class WireClient(Client):
    """nats-py's client, and :meth:`sink` / :meth:`publish_each` (the module's
    docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._sinks: dict[int, Sink] = {}

    async def subscribe_sink(
        self, subject: str, deliver: Sink, others: Callable[[Msg], Awaitable[None]]
    ) -> None:
        """Subscribe to ``subject``: its JetStream messages go to ``deliver``, the rest
        (statuses) to ``others``, nats-py's way."""
        sub = await self.subscribe(
            subject, cb=others, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        self._sinks[sub._id] = deliver

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        deliver = self._sinks.get(sid)
        if deliver is not None and reply.startswith(ACK_PREFIX) and sid in self._subs:
            self.stats["in_msgs"] += 1
            self.stats["in_bytes"] += len(data)
            deliver(reply.decode(), data)
            return
        await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]

    async def publish_each(self, subjects: list[str], payload: bytes) -> None:
        """``payload`` published to each of ``subjects``, as one command (what
        ``publish`` would check: a closed or draining connection, the buffer of a
        connection that is reconnecting)."""
        if not subjects:
            return
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        if self.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        tail = b" %d\r\n%s\r\n" % (len(payload), payload)
        command = b"".join([b"PUB " + subject.encode() + tail for subject in subjects])
        if not self.is_connected and (
            self._max_pending_size <= 0
            or len(command) + self._pending_data_size > self._max_pending_size
        ):
            raise nats.errors.OutboundBufferLimitError
        self.stats["out_msgs"] += len(subjects)
        self.stats["out_bytes"] += len(payload) * len(subjects)
        await self._send_command(command)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()


__all__ = ["ACK_PREFIX", "Sink", "WireClient"]
