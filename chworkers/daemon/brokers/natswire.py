"""The JetStream source's nats-py client, with a short way in and out for the messages
of a pull and their acknowledgements (docs/brokers.md, "Measured").

nats-py hands every message of a subscription through the same road: its headers parsed
into a dict, a :class:`~nats.aio.msg.Msg` built (subject and reply decoded), the message
put on the subscription's queue, and a task of the subscription taking it off to await
the callback. For a pulled JetStream message the source needs two things: its reply
subject (its stream sequence, its delivery count, where to acknowledge it) and its
payload; a producer's headers (``Nats-Msg-Id``) are of no use to it. Profiled at steady
state, that road was most of the event loop's time. So the messages of a subscription
made with :meth:`WireClient.subscribe_sink` that have an acknowledgement subject go
straight to the sink's function, a run of them (all those of one read) in one call, as
two lists (acknowledgement subjects as bytes, payloads), their headers unread; their
control lines are matched by one regular expression each (:data:`SINK_FRAME`).
Everything else (the pulls' statuses, other subscriptions) takes nats-py's own road.

A read holds hundreds of such messages in a row, all alike (one subscription, one
stream and consumer, with headers or without), so a run of them is
taken by a loop of its own first (:func:`take_run`): one regular expression made for
that kind of line (:func:`run_frame`), literal where the messages are alike, which also
reads each acknowledgement subject's delivery count and stream sequence (what the source
would otherwise split each subject for), the payload sliced out where the sizes say,
nothing else per message. The general loop, after it, takes what is not such a run:
statuses, ``PING``, other subscriptions, a message split between reads, subjects of the
long form.

Acknowledging is the same: nats-py's ``publish`` checks, formats and queues one message
per call; :meth:`WireClient.publish_each` writes one payload to many subjects as one
command, built by one ``join``. Both rest on two methods of nats-py's client that are not its public API
(``_process_msg``, the parser's way in, and ``_send_command``, publish's way out); both
have kept their shape through nats-py 2.x, which ``pyproject.toml`` pins, and every NATS
test goes through them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Container
from urllib.parse import ParseResult

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.transport import TcpTransport, Transport
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

from chworkers.daemon.brokers.natsreplies import Sequences, read_sequences

#: What a sink gets: a run of messages in the order they came, as their
#: acknowledgement subjects and their payloads (two lists of the same length), and what
#: their subjects say (stream sequences, redeliveries) when the parser read it already
#: (None: read it from the subjects, ``natsreplies.sequences``).
Sink = Callable[[list[bytes], list[bytes], Sequences | None], None]

#: How much one read of the socket takes at most (:class:`WideTransport`).
READ_SIZE = 256 * 1024

#: The start of a JetStream message's reply subject (statuses have none).
ACK_PREFIX = b"$JS.ACK."

#: The control line of a JetStream message as nats-server writes it (single spaces):
#: ``MSG <subject> <sid> <reply> <size>`` or ``HMSG <subject> <sid> <reply> <header
#: size> <size>``, the reply an acknowledgement subject. Anything else, a line with
#: other spacing included, takes the general way (:func:`control_line`, nats-py).
SINK_FRAME = re.compile(
    rb"(H?)MSG [^ \r\n]+ ([0-9]+) (\$JS\.ACK\.[^ \r\n]+) (?:([0-9]+) )?([0-9]+)\r\n"
)


class WireParser(Parser):
    """nats-py's parser with a short way for whole messages (the module's docstring):
    a run of ``MSG``/``HMSG`` frames, ``PING``, ``PONG`` and ``+OK`` is parsed here, by
    position in the buffer, a sink's messages handed to it in runs (one call for all
    the messages in a read, not an ``await`` each); anything else (``INFO``, ``-ERR``, a
    malformed line), and a message whose payload the parser was already waiting for, is
    left to nats-py's parser."""

    nc: WireClient

    async def parse(self, data: bytes = b"") -> None:
        self.buf.extend(data)
        if self.state == AWAITING_CONTROL_LINE and not await self._frames():
            return  # all taken, or the rest of a frame still to come
        await super().parse()

    async def _frames(self) -> bool:
        """Take whole frames from the start of the buffer; whether nats-py's parser
        must take over (an operation this one leaves to it)."""
        nc = self.nc
        sinks, subs = nc._sinks, nc._subs
        # The buffer as it is now: a reconnection that resets the parser while this one
        # awaits gives it a new one, which is not this one's to cut.
        buf = self.buf
        data = bytes(buf)
        size = len(data)
        pos = 0
        # The run of a sink's messages being collected: handed on before anything else
        # is processed (in order), and once the buffer is taken.
        run_sid = -1
        replies: list[bytes] = []
        payloads: list[bytes] = []
        match = SINK_FRAME.match
        try:
            while pos < size:
                if not replies:  # (else the loop's run of the same sink goes on)
                    taken = take_run(data, pos, sinks, subs)
                    if taken is not None:
                        sid, pos, run_replies, run_payloads, run_seqs = taken
                        self._hand_on(sid, run_replies, run_payloads, run_seqs)
                        continue
                frame = match(data, pos)
                if frame is not None:
                    # A JetStream message (a reply subject of $JS.ACK.), the common case.
                    head, sid_text, reply, header_size, total = frame.groups()
                    if (header_size is None) == (head == b"H"):
                        frame = None  # MSG with a header size, HMSG without: malformed
                    else:
                        sid = int(sid_text)
                        if sid != run_sid:
                            if replies:
                                self._hand_on(run_sid, replies, payloads)
                                replies, payloads = [], []
                            run_sid = sid if sid in sinks and sid in subs else -1
                        if run_sid >= 0:
                            start = frame.end()
                            stop = start + int(total)
                            if stop + 2 > size:
                                return False  # the rest of the payload is still to come
                            pos = stop + 2
                            replies.append(reply)
                            payloads.append(
                                data[start + int(header_size) : stop]
                                if header_size
                                else data[start:stop]
                            )
                            continue
                if replies:
                    self._hand_on(run_sid, replies, payloads)
                    replies, payloads = [], []
                run_sid = -1
                end = data.find(b"\r\n", pos)
                if end < 0:
                    return False  # the rest of the line is still to come
                op = data[pos : pos + 4]
                if op == b"PING" or op == b"PONG" or op == b"+OK\r":
                    pos = end + 2
                    if op == b"PING":
                        await nc._process_ping()
                    elif op == b"PONG":
                        await nc._process_pong()
                    if self.buf is not buf:
                        return False  # reset meanwhile: what is left is the old connection's
                    continue
                parsed = control_line(data, pos, end)
                if parsed is None:
                    return True
                subject, sid, reply, skip, length = parsed
                start = end + 2
                stop = start + length
                if stop + 2 > size:
                    return False  # the rest of the payload is still to come
                pos = stop + 2
                headers = data[start : start + skip] if skip else None
                await nc._process_msg(sid, subject, reply, data[start + skip : stop], headers)
                if self.buf is not buf:
                    return False
            return False
        finally:
            del buf[:pos]
            if replies:
                self._hand_on(run_sid, replies, payloads)

    def _hand_on(
        self,
        sid: int,
        replies: list[bytes],
        payloads: list[bytes],
        seqs: Sequences | None = None,
    ) -> None:
        nc = self.nc
        nc.stats["in_msgs"] += len(replies)
        nc.stats["in_bytes"] += sum(map(len, payloads))
        nc._sinks[sid](replies, payloads, seqs)


def take_run(
    data: bytes, pos: int, sinks: Container[int], subs: Container[int]
) -> tuple[int, int, list[bytes], list[bytes], Sequences] | None:
    """The run of a sink's JetStream messages at ``data[pos:]`` (the module's
    docstring): ``(sid, where the run ends, their acknowledgement subjects, their
    payloads, what their subjects say)``; None when the message at ``pos`` is not one
    (or its acknowledgement subject is not of the short form), or not whole.

    The first message's control line gives the run's kind: its subscription, stream and
    consumer, with headers or without; the run goes on while the next control
    line is of the same kind (one regular expression made for it, :func:`run_frame`,
    that also reads each subject's delivery count and stream sequence) and its message
    is whole. Each message is taken where the one before it ended, by the sizes
    nats-server wrote."""
    end = data.find(b"\r\n", pos)
    if end < 0:
        return None
    first = data[pos:end].split(b" ")
    fields = len(first)
    if not (
        (fields == 6 and first[0] == b"HMSG") or (fields == 5 and first[0] == b"MSG")
    ) or not first[3].startswith(ACK_PREFIX):
        return None
    reply = first[3].split(b".")
    if len(reply) != 9:
        return None  # the long form (a domain): the general loop
    try:
        sid = int(first[2])
    except ValueError:
        return None
    if sid not in sinks or sid not in subs:
        return None
    match = run_frame(first[2], reply[2], reply[3], fields == 6)
    size = len(data)
    replies: list[bytes] = []
    payloads: list[bytes] = []
    seqs: list[bytes] = []
    delivered: list[bytes] = []
    reply_to, payload_to = replies.append, payloads.append
    seq_to, delivered_to = seqs.append, delivered.append
    while (frame := match(data, pos)) is not None:
        reply_subject, times, seq, header_size, total = frame.groups()
        start = frame.end()
        stop = start + int(total)
        if stop + 2 > size:
            break  # the rest of it is still to come
        reply_to(reply_subject)
        payload_to(data[start + int(header_size) : stop] if header_size else data[start:stop])
        seq_to(seq)
        delivered_to(times)
        pos = stop + 2
    if not replies:
        return None
    return sid, pos, replies, payloads, read_sequences(seqs, delivered)


@functools.lru_cache(maxsize=64)
def run_frame(
    sid: bytes, stream: bytes, consumer: bytes, headers: bool
) -> Callable[[bytes, int], re.Match[bytes] | None]:
    """The ``match`` of the control line of a JetStream message to subscription ``sid``,
    from ``stream`` through ``consumer`` (an acknowledgement subject of the short form:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.
    <pending>``), with headers or without, as nats-server writes it. Its groups: the
    acknowledgement subject, its delivery count, its stream sequence, the header size
    (empty without headers) and the total size. Literal where every message of the
    subscription is alike (faster to match than classes of characters); the subject is
    any (a stream's messages may each have their own: one expression for them all)."""
    numbers = rb"([0-9]+)\.([0-9]+)\.[0-9]+\.[0-9]+\.[0-9]+"
    reply = rb"(\$JS\.ACK\." + re.escape(stream) + rb"\." + re.escape(consumer) + rb"\." + numbers
    sizes = rb"([0-9]+) ([0-9]+)" if headers else rb"()([0-9]+)"
    head = b"HMSG " if headers else b"MSG "
    line = head + rb"[^ \r\n]+ " + re.escape(sid) + b" " + reply + rb") " + sizes
    return re.compile(line + rb"\r\n").match


def control_line(data: bytes, pos: int, end: int) -> tuple[bytes, int, bytes, int, int] | None:
    """``(subject, sid, reply, header bytes, total bytes)`` of the ``MSG`` or ``HMSG`` line
    at ``data[pos:end]``; None for any other operation, or a line that does not parse
    (nats-py's parser takes those, and says what is wrong)."""
    op = data[pos : pos + 4]
    try:
        if op == b"HMSG":
            parts = data[pos + 5 : end].split()
            if len(parts) == 5:
                return parts[0], int(parts[1]), parts[2], int(parts[3]), int(parts[4])
            if len(parts) == 4:
                return parts[0], int(parts[1]), b"", int(parts[2]), int(parts[3])
        elif op == b"MSG ":
            parts = data[pos + 4 : end].split()
            if len(parts) == 4:
                return parts[0], int(parts[1]), parts[2], 0, int(parts[3])
            if len(parts) == 3:
                return parts[0], int(parts[1]), b"", 0, int(parts[2])
    except ValueError:
        pass
    return None


class WideTransport(TcpTransport):
    """nats-py's TCP transport, reading up to :data:`READ_SIZE` at a time (nats-py reads
    32 KiB, and its stream reader stops taking from the socket past 64 KiB): a pull's
    messages come in reads of a few hundred, each read one turn of the event loop, one
    copy into the parser's buffer and one run (:func:`take_run`)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    async def connect(self, uri: ParseResult, buffer_size: int, connect_timeout: int) -> None:
        await super().connect(uri, max(buffer_size, READ_SIZE), connect_timeout)

    async def read(self, buffer_size: int) -> bytes:
        data: bytes = await super().read(max(buffer_size, READ_SIZE))
        return data


class WireClient(Client):
    """nats-py's client, and :meth:`sink` / :meth:`publish_each` (the module's
    docstring); its TCP connections are :class:`WideTransport`'s."""

    def __init__(self) -> None:
        super().__init__()
        self._sinks: dict[int, Sink] = {}
        self._ps = WireParser(self)

    @property
    def _transport(self) -> Transport | None:
        return self._wire_transport

    @_transport.setter
    def _transport(self, transport: Transport | None) -> None:
        # nats-py makes its TcpTransport when it first connects (a WebSocket's stays).
        if type(transport) is TcpTransport:
            transport = WideTransport()
        self._wire_transport = transport

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
            deliver([bytes(reply)], [bytes(data)], None)
            return
        await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]

    async def publish_each(self, subjects: list[bytes], payload: bytes) -> None:
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
        command = b"PUB " + (tail + b"PUB ").join(subjects) + tail
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


__all__ = [
    "ACK_PREFIX",
    "READ_SIZE",
    "Sink",
    "WideTransport",
    "WireClient",
    "WireParser",
    "control_line",
    "take_run",
]
