"""A stream whose messages each have their own subject (``events.<user>``) is read in
runs as one of a single subject is. The run's regular expression had the subject in it
(natswire.run_frame): every message on a new subject ended the run and compiled another
expression (about a millisecond each on the loaded development machine, past the caches'
64 and 512), hundreds of times the cost of a message in a run."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("nats")

from chworkers.daemon.brokers.natsreplies import Sequences
from chworkers.daemon.brokers.natswire import WireClient, run_frame

SINK = 7


def test_messages_on_many_subjects_are_one_run() -> None:
    out = []
    for i in range(50):
        payload = b'{"n":%d}\n' % i
        reply = b"$JS.ACK.ev.c.1.%d.%d.1733090000000000000.%d" % (i + 1, i + 1, 50 - i)
        head = b"NATS/1.0\r\nNats-Msg-Id: %d\r\n\r\n" % i
        out.append(
            b"HMSG events.user%d %d %s %d %d\r\n%s%s\r\n"
            % (i, SINK, reply, len(head), len(head) + len(payload), head, payload)
        )
    client = WireClient()
    calls: list[tuple[int, bool]] = []
    payloads: list[bytes] = []

    def sink(replies: list[bytes], got: list[bytes], seqs: Sequences | None) -> None:
        calls.append((len(replies), seqs is not None))
        payloads.extend(got)

    client._subs[SINK] = object()  # type: ignore[assignment]
    client._sinks[SINK] = sink
    run_frame.cache_clear()
    asyncio.run(client._ps.parse(b"".join(out)))
    assert calls == [(50, True)]  # one run, its sequences read by the parser
    assert payloads == [b'{"n":%d}\n' % i for i in range(50)]
    assert run_frame.cache_info().currsize == 1
