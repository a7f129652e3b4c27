"""What the JetStream source does on the wire, as coroutines on its event loop: pull
messages from the durable consumer, acknowledge them (or say they are in progress, or
terminate them), read a manifest's messages back from the stream, read the consumer's
state.

Pulls are made here rather than with nats-py's ``fetch``, which waits for each message
of a batch on its own (a timer per message): with a callback on an inbox of our own,
collecting a pulled batch costs about a fourth (15k against 95k messages/s of 200
bytes on the 2-core development machine, acknowledgements included).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from chworkers.daemon.brokers.assembly import Message
from chworkers.daemon.brokers.natsreplies import Sequences
from chworkers.errors import BrokerError

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from chworkers.daemon.brokers.natswire import WireClient

log = logging.getLogger(__name__)

#: Stream reads in flight at once while a batch is rebuilt from its manifest.
READS_AT_ONCE = 64
#: How long a pull that asks for what is there at once may take to be answered.
NO_WAIT_TIMEOUT = 10.0

#: A run of pulled messages: (their acknowledgement subjects, their payloads, in the
#: order they came; time.monotonic() when the pull that brought them was sent: their
#: ack_wait cannot have started before; what their subjects say when the parser read it,
#: else None).
Pulled = tuple[list[bytes], list[bytes], float, Sequences | None]


class Pull:
    """One pull request: when it was sent, how many messages it asked for and brought,
    and whether the server ended it (a status: no messages, expired, ...)."""

    def __init__(self, count: int) -> None:
        self.sent = time.monotonic()
        self.count = count
        self.got = 0
        self.done = asyncio.Event()


class Consumer:
    """A durable pull consumer of one stream, on a connection of the source's; its
    acknowledgements go on a second connection (``acks``), if given."""

    def __init__(
        self,
        client: WireClient,
        js: JetStreamContext,
        stream: str,
        consumer: str,
        ack_wait: float,
        acks: WireClient | None = None,
        filter_subject: str = "",
    ) -> None:
        self.client = client
        self.filter_subject = filter_subject
        # nats-server reads each connection in order: a batch's acknowledgements (tens of
        # thousands of messages to it) would hold up the pulls sent after them.
        self.acks = acks or client
        self.ack_wait = ack_wait
        self.js = js
        self.stream = stream
        self.consumer = consumer
        self.inbox = client.new_inbox()
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._numbers = itertools.count(1)
        self._pulls: dict[int, Pull] = {}
        self._buffer: list[Pulled] = []
        self._distrust_until = 0.0

    async def start(self) -> None:
        await self.client.subscribe_sink(f"{self.inbox}.*", self._delivered, self._status)

    async def _status(self, msg: Msg) -> None:
        """A status, to the pull's own inbox (404 no messages, 408 expired, ...): the
        pull is over."""
        status = (msg.headers or {}).get("Status", "")
        if status == "100":
            return  # an idle heartbeat (not asked for)
        if status not in ("404", "408"):
            log.debug("a pull of consumer %s ended: %s", self.consumer, msg.headers)
        pull = self._pulls.pop(int(msg.subject.rpartition(".")[2]), None)
        if pull is not None:
            pull.done.set()

    def _delivered(
        self, replies: list[bytes], payloads: list[bytes], seqs: Sequences | None
    ) -> None:
        """Pulled messages (:mod:`~chworkers.daemon.brokers.natswire`'s short way in:
        called by the parser for each run of them, so it only files them)."""
        # A message comes with its stream subject, not the pull's inbox: the server serves
        # pulls in the order they came, so it belongs to the oldest pull still open.
        count = len(replies)
        at = 0
        trusted = time.monotonic() >= self._distrust_until
        while at < count:
            number = next(iter(self._pulls), None)
            if number is None:
                # Asked for by no pull still open: the earliest possible (unknown).
                self._file(replies, payloads, seqs, at, count, 0.0)
                return
            pull = self._pulls[number]
            take = min(count - at, pull.count - pull.got)
            self._file(replies, payloads, seqs, at, at + take, pull.sent if trusted else 0.0)
            at += take
            pull.got += take
            if pull.got >= pull.count:
                del self._pulls[number]
                pull.done.set()

    def _file(
        self,
        replies: list[bytes],
        payloads: list[bytes],
        seqs: Sequences | None,
        start: int,
        stop: int,
        sent: float,
    ) -> None:
        if start == 0 and stop == len(replies):
            self._buffer.append((replies, payloads, sent, seqs))
            return
        if seqs is not None:
            ids, again = seqs
            seqs = ids[start:stop], [i - start for i in again if start <= i < stop]
        self._buffer.append((replies[start:stop], payloads[start:stop], sent, seqs))

    async def _request(self, body: dict[str, Any], timeout: float) -> None:
        number = next(self._numbers)
        pull = self._pulls[number] = Pull(int(body["batch"]))
        await self.client.publish(
            self._next, json.dumps(body).encode(), reply=f"{self.inbox}.{number}"
        )
        try:
            await asyncio.wait_for(pull.done.wait(), timeout)
        except TimeoutError:
            # Unanswered (the connection broke?): what it brings later cannot be told
            # from what another pull would bring, so there is none for one ack_wait.
            self._pulls.pop(number, None)
            self._distrust_until = time.monotonic() + self.ack_wait

    async def pull(self, count: int, wait: float) -> list[Pulled]:
        """Up to ``count`` messages: those the consumer has at once; when it has none,
        the first to come within ``wait`` seconds."""
        distrust = self._distrust_until - time.monotonic()
        if distrust > 0:
            # A pull went unanswered: no new pull until its messages, if any come, can no
            # longer be told from theirs (what comes meanwhile counts as late).
            await asyncio.sleep(min(wait, distrust))
            pulled, self._buffer = self._buffer, []
            return pulled
        if not self._buffer:
            await self._request({"batch": count, "no_wait": True}, NO_WAIT_TIMEOUT)
        if not self._buffer and wait > 0:
            expires = max(1_000_000, int(wait * 1e9))
            await self._request({"batch": 1, "expires": expires}, wait + 2.0)
            if self._buffer and count > 1:
                await self._request({"batch": count - 1, "no_wait": True}, NO_WAIT_TIMEOUT)
        pulled, self._buffer = self._buffer, []
        return pulled

    async def send(self, replies: list[bytes], what: bytes) -> None:
        """``what`` (an acknowledgement, in progress, terminate) to each delivery, as one
        write; returns once the server has them (a flush: its PONG follows them)."""
        await self.acks.publish_each(replies, what)
        await self.acks.flush(timeout=10)

    async def read(self, seqs: list[int]) -> dict[str, Message]:
        """Messages read back from the stream by sequence (those it still has)."""
        import nats.js.errors

        out: dict[str, Message] = {}
        for start in range(0, len(seqs), READS_AT_ONCE):
            chunk = seqs[start : start + READS_AT_ONCE]
            got = await asyncio.gather(
                *(self.js.get_msg(self.stream, seq) for seq in chunk), return_exceptions=True
            )
            for seq, message in zip(chunk, got, strict=True):
                if isinstance(message, nats.js.errors.NotFoundError):
                    continue
                if isinstance(message, BaseException):
                    raise message
                out[str(seq)] = Message(str(seq), message.data or b"")
        return out

    async def floor(self) -> int:
        """The consumer's acknowledgement floor: every message up to this stream
        sequence is acknowledged."""
        return (await self.state())[2]

    async def next_eligible(self, seq: int) -> int:
        """The stream sequence of the first message at or after ``seq`` that this
        consumer delivers (on its filter subject), 0 when the stream has none."""
        import nats.js.errors

        try:
            message = await self.js.get_msg(
                self.stream, seq=seq, subject=self.filter_subject or ">", next=True
            )
        except nats.js.errors.NotFoundError:
            return 0
        return int(message.seq or 0)

    async def ack_all(self, reply: bytes) -> None:
        """One ``+ACK`` that acknowledges every message up to ``reply``'s (the
        consumer's policy is AckAll), once the server has it."""
        await self.send([reply], b"+ACK")

    async def state(self) -> tuple[int, int, int]:
        """(messages not delivered yet, delivered and not acknowledged, the
        acknowledgement floor's stream sequence)."""
        info = await self.js.consumer_info(self.stream, self.consumer)
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        return int(info.num_pending or 0), int(info.num_ack_pending or 0), int(floor or 0)

    async def close(self) -> None:
        try:
            await self.client.close()
            if self.acks is not self.client:
                await self.acks.close()
        except Exception as exc:  # closing a connection that is gone already
            raise BrokerError(f"closing the connection: {exc}") from exc


__all__ = ["Consumer", "Pulled"]
