"""chworkers.daemon.brokers.natswire: the short way in for pulled messages parses the
wire exactly as nats-py's own parser does, however the bytes are cut into reads.

The same stream of server operations (JetStream messages with and without headers, the
pulls' statuses, messages of another subscription, ``+OK``, ``INFO``) goes through
nats-py's parser and through :class:`WireParser`, in reads cut at arbitrary places: the
sink gets every JetStream message of its subscription (acknowledgement subject and
payload, the headers dropped), nats-py's ``_process_msg`` gets everything else with the
same arguments as from its own parser. The end-to-end path (a real nats-server) is
tests/test_nats_source.py's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("nats")

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.protocol.parser import Parser

from chworkers.daemon.brokers.natsreplies import Sequences, sequences
from chworkers.daemon.brokers.natswire import WireClient

SINK, OTHER = 7, 9


def stream() -> tuple[bytes, list[tuple[Any, ...]]]:
    """Server operations, and what each must become: ``("sink", reply, payload)`` or
    ``("msg", sid, subject, reply, payload, headers)``."""
    out: list[bytes] = []
    want: list[tuple[Any, ...]] = []
    for i in range(40):
        payload = b"".join(b'{"id":%d}\n' % j for j in range(i % 4))
        reply = b"$JS.ACK.ev.c.1.%d.%d.1733090000000000000.%d" % (i + 1, i + 1, 40 - i)
        if i % 3 == 0:  # headers from the producer (Nats-Msg-Id)
            head = b"NATS/1.0\r\nNats-Msg-Id: %d\r\n\r\n" % i
            out.append(
                b"HMSG ev.data %d %s %d %d\r\n%s%s\r\n"
                % (SINK, reply, len(head), len(head) + len(payload), head, payload)
            )
        else:
            out.append(b"MSG ev.data %d %s %d\r\n%s\r\n" % (SINK, reply, len(payload), payload))
        want.append(("sink", reply, payload))
        if i % 7 == 3:  # a pull's status: to the inbox, no reply, headers only
            head = b"NATS/1.0 404 No Messages\r\n\r\n"
            out.append(b"HMSG _INBOX.x.3 %d %d %d\r\n%s\r\n" % (SINK, len(head), len(head), head))
            want.append(("msg", SINK, b"_INBOX.x.3", b"", b"", head))
        if i % 11 == 5:  # another subscription's message, with a reply
            out.append(b"MSG other.subject %d _INBOX.r.1 5\r\nhello\r\n" % OTHER)
            want.append(("msg", OTHER, b"other.subject", b"_INBOX.r.1", b"hello", None))
        if i % 17 == 8:  # another subscription's JetStream message, between a run's
            ack = b"$JS.ACK.ev.d.1.%d.1.1733090000000000000.0" % i
            out.append(b"MSG ev.data %d %s 2\r\nhi\r\n" % (OTHER, ack))
            want.append(("msg", OTHER, b"ev.data", ack, b"hi", None))
        if i % 13 == 6:
            out.append(b"+OK\r\n")
        if i == 20:
            out.append(b'INFO {"server_id":"x","max_payload":1048576}\r\n')
    # Long runs, as a pull brings them: with headers of different sizes, payloads that
    # hold a CRLF and what looks like a control line (framed by the sizes, not by
    # lines), then without headers, a PING between them.
    for i in range(60):
        payload = b'{"run":%d}\n' % i
        if i % 9 == 4:
            fake = b"$JS.ACK.ev.c.1.999.999.1733090000000000000.0"
            payload += b"x\r\nHMSG ev.data %d %s 1 3\r\n\r\nz\r\n" % (SINK, fake)
        times = 1 + (i % 7 == 2)  # some redelivered
        reply = b"$JS.ACK.ev.c.%d.%d.%d.1733090000000000000.%d" % (times, 100 + i, 100 + i, 60 - i)
        if i < 40:
            head = b"NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n" % (b"m" * (i % 5 + 1))
            out.append(
                b"HMSG ev.data %d %s %d %d\r\n%s%s\r\n"
                % (SINK, reply, len(head), len(head) + len(payload), head, payload)
            )
        else:
            out.append(b"MSG ev.data %d %s %d\r\n%s\r\n" % (SINK, reply, len(payload), payload))
        want.append(("sink", reply, payload))
        if i == 50:
            out.append(b"PING\r\n")
            want.append(("ping",))
    return b"".join(out), want


class Recorder(WireClient):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, ...]] = []
        self.runs = 0  # runs that the parser read the sequences of
        self._subs[SINK] = object()  # type: ignore[assignment]
        self._sinks[SINK] = self._run

    def _run(self, replies: list[bytes], payloads: list[bytes], seqs: Sequences | None) -> None:
        assert len(replies) == len(payloads) > 0
        if seqs is not None:  # read by the parser: what the subjects say
            assert seqs == sequences(replies)
            self.runs += 1
        self.seen += [("sink", r, p) for r, p in zip(replies, payloads, strict=True)]

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        # What reaches nats-py's own road (the sink's messages never do).
        if self._sinks.get(sid) is not None and reply.startswith(b"$JS.ACK."):
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.seen.append(("msg", sid, bytes(subject), bytes(reply), bytes(data), headers))

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        self.seen.append(("info",))

    async def _process_ping(self) -> None:
        self.seen.append(("ping",))


def feed(parser: Parser, data: bytes, cuts: list[int]) -> None:
    async def run() -> None:
        at = 0
        for cut in [*sorted(set(cuts)), len(data)]:
            if cut > at:
                await parser.parse(data[at:cut])
                at = cut

    asyncio.run(run())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=9000), max_size=60))
def test_any_cut_of_the_reads_gives_what_nats_py_gives(cuts: list[int]) -> None:
    data, want = stream()
    client = Recorder()
    feed(client._ps, data, cuts)
    assert [s for s in client.seen if s[0] != "info"] == want
    assert ("info",) in client.seen  # handed to nats-py's parser, and parsed on
    assert client._ps.buf == bytearray()
    assert client.runs > 0


def test_nats_py_parser_agrees_on_the_stream() -> None:
    """The expectations above are nats-py's own reading of the stream."""
    data, want = stream()
    seen: list[tuple[Any, ...]] = []

    class Plain(Client):
        async def _process_msg(
            self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            if sid == SINK and reply.startswith(b"$JS.ACK."):
                seen.append(("sink", bytes(reply), data))
            else:
                seen.append(("msg", sid, subject, reply, data, headers))

        async def _process_info(
            self, info: dict[str, Any], initial_connection: bool = False
        ) -> None:
            pass

        async def _process_ping(self) -> None:
            seen.append(("ping",))

    feed(Parser(Plain()), data, [])
    assert seen == want


def test_a_malformed_line_is_nats_pys_error() -> None:
    import nats.errors

    client = Recorder()
    with pytest.raises(nats.errors.ProtocolError):
        feed(client._ps, b"MSG ev.data x $JS.ACK.a 3\r\nabc\r\nBOGUS\r\n", [])


def test_the_sources_connections_read_wide(nats_server: Any) -> None:
    """A connection reads up to READ_SIZE at a time (nats-py's own reads are of 32 KiB):
    a message larger than nats-py's read arrives whole, in fewer reads."""
    from chworkers.daemon.brokers.natswire import READ_SIZE, WideTransport

    async def run() -> tuple[int, list[int]]:
        client = WireClient()
        await client.connect(nats_server.url)
        got: asyncio.Queue[bytes] = asyncio.Queue()
        sizes: list[int] = []
        parse = client._ps.parse

        async def counted(data: bytes = b"") -> None:
            sizes.append(len(data))
            await parse(data)

        client._ps.parse = counted  # type: ignore[method-assign]
        try:
            assert type(client._transport) is WideTransport

            async def take(msg: Any) -> None:
                await got.put(msg.data)

            await client.subscribe("wide", cb=take)
            await client.publish("wide", b"x" * (READ_SIZE // 2))
            return len(await asyncio.wait_for(got.get(), 10)), sizes
        finally:
            await client.close()

    size, reads = asyncio.run(run())
    assert size == READ_SIZE // 2
    assert max(reads) > 32 * 1024
