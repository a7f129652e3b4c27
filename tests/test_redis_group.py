"""The Redis source's commands (chworkers/daemon/brokers/redisgroup.py) against a real
redis-server: what the heartbeat's refresh touches, and what it leaves alone; and its
framing of a reply's entries (redisentries.py), which must give the bytes a rebuild from
the manifest gives."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redisserver import RedisServer

from chworkers.daemon.batcher import BatchLimits
from chworkers.daemon.brokers import assembly, redisentries
from chworkers.daemon.brokers.assembly import Assembler, Assembly
from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisgroup import StreamGroup
from chworkers.daemon.brokers.redismanifests import ids_json

pytestmark = pytest.mark.timeout(120)


def idle(server: RedisServer, consumer: str) -> dict[str, tuple[int, int]]:
    """id -> (idle ms, deliveries) of ``consumer``'s pending entries."""
    client = server.client()
    try:
        entries = client.xpending_range(
            "ev", "chworkers", "-", "+", count=100_000, consumername=consumer
        )
    finally:
        client.close()
    return {
        e["message_id"].decode(): (e["time_since_delivered"], e["times_delivered"]) for e in entries
    }


def test_ids_travel_as_json() -> None:
    assert json.loads(ids_json(["1-0", "1700000000000-12"])) == ["1-0", "1700000000000-12"]
    assert json.loads(ids_json([])) == []


def test_touch_refreshes_only_this_consumers_entries_of_the_batches(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    pipe = client.pipeline(transaction=False)
    for i in range(3000):
        pipe.xadd("ev", {"data": f'{{"n":{i}}}'})
    pipe.execute()
    options = RedisSourceSettings(url=redis_server.url, stream="ev")
    mine, theirs = StreamGroup(options, "a", "test"), StreamGroup(options, "b", "test")
    try:
        mine.create()
        ours = [m.id for m in mine.read(">", 2000)]
        others = [m.id for m in theirs.read(">", 1000)]
        time.sleep(0.3)
        # One batch of consecutive ids, one of two ids 1,999 apart (the range holds more
        # of our entries than the script asks XPENDING for: looked up one by one), and
        # ids of another consumer, which must stay its own.
        touched = [*ours[:500], ours[600], ours[-1]]
        mine.touch([ours[:500], [ours[600], ours[-1]], others[:10]])
        after = idle(redis_server, "a")
        for entry_id in touched:
            assert after[entry_id][0] < 250, (entry_id, after[entry_id])
            assert after[entry_id][1] == 1  # a refresh is not a delivery
        for entry_id in ours[500:600] + ours[601:-1]:
            assert after[entry_id][0] >= 300
        assert set(idle(redis_server, "b")) == set(others)
        assert min(v[0] for v in idle(redis_server, "b").values()) >= 300
        mine.touch([])  # nothing in flight: no command at all
    finally:
        mine.close()
        theirs.close()
        client.close()


def framed(
    assembler: Assembler, entries: list[Any], limits: BatchLimits
) -> list[tuple[list[str], int, int, bytes, list[str]]]:
    """The batches the source makes of a reply's entries (redisentries.pieces, then
    extend piece by piece, cut when full): ids, rows, size, bytes, poison met."""
    out: list[tuple[list[str], int, int, bytes, list[str]]] = []
    batch, bad = Assembly(), []
    for piece in redisentries.pieces(assembler, entries, b"data"):
        rest: redisentries.Piece | None = piece
        while rest is not None:
            rest, poison = redisentries.extend(assembler, batch, rest, limits, b"data")
            bad += [p.message.id for p in poison]
            if batch.full(limits):
                out.append((batch.ids, batch.rows, batch.size, assembler.payload(batch), bad))
                batch, bad = Assembly(), []
    if batch.ids or bad:
        out.append((batch.ids, batch.rows, batch.size, assembler.payload(batch), bad))
    return out


def one_by_one(
    assembler: Assembler, messages: list[Any], limits: BatchLimits
) -> list[tuple[list[str], int, int, bytes, list[str]]]:
    """The batches the same entries make as messages (claims), one at a time."""
    out, start = [], 0
    while start < len(messages):
        batch = Assembly()
        start, bad = assembler.extend(batch, messages, start, limits)
        ids = [p.message.id for p in bad]
        out.append((batch.ids, batch.rows, batch.size, assembler.payload(batch), ids))
    return out


ENTRIES = [
    [b"1-0", [b"data", b'{"n":1}']],  # no final newline
    [b"1-1", [b"data", b'{"n":2}\n{"n":3}\n']],
    [b"1-2", [b"data", b'\n{"n":4}\n\n']],  # blank lines are no records
    [b"1-3", [b"data", b""]],  # nothing: in the batch, no rows
    [b"1-4", [b"other", b"x"]],  # poison: no data field
    [b"1-5", [b"other", b"x", b"data", b'{"n":5}']],  # the field not first
    [b"1-6", None],  # deleted from the stream meanwhile: poison
    [b"1-7", [b"data", b'{"n":6}\n']],
]


@pytest.mark.parametrize("fmt", ["JSONEachRow", "CSV"])
def test_entries_frame_as_messages_and_a_rebuild_do(fmt: str) -> None:
    """Straight from the reply, through Messages (claims) and from a manifest (a rebuild):
    the same batches, the same bytes, the same poison."""
    assembler = Assembler(fmt, max_record_bytes=64)
    entries = [*ENTRIES, [b"1-8", [b"data", b"y" * 100]]]  # over the record limit
    messages = [redisentries.message(e, b"data") for e in entries]
    limits = BatchLimits(max_rows=3)
    raw = framed(assembler, entries, limits)
    assert raw == one_by_one(assembler, messages, limits)
    assert raw[0][:2] == (["1-0", "1-1"], 3)
    assert {"1-4", "1-6"} <= {i for batch in raw for i in batch[4]}  # no field, deleted
    by_id = {m.id: m for m in messages}
    for ids, rows, _size, payload, _poison in raw:
        rebuilt, _ = assembler.rebuild(ids, by_id)
        assert (rebuilt.rows, assembler.payload(rebuilt)) == (rows, payload)


#: An entry's records: 1 to 4 JSON lines, now and then without the last newline or with
#: a blank line (those go one by one), or in a field not first (the general way); lines
#: of 8 bytes, the first one of 40 in a "long line" entry (over a small record limit).
entry_fields = st.tuples(
    st.integers(min_value=1, max_value=4),
    st.sampled_from(
        ["whole", "whole", "whole", "no final newline", "blank line", "other", "long line"]
    ),
).map(
    lambda spec: (
        [b"other", b"x", b"data", b'{"n":0}\n']
        if spec[1] == "other"
        else [
            b"data",
            (b'{"n":0,"s":"' + b"x" * 25 + b'"}\n' if spec[1] == "long line" else b"")
            + b"".join(b'{"n":%d}\n' % i for i in range(spec[0]))[
                : -1 if spec[1] == "no final newline" else None
            ]
            + (b"\n" if spec[1] == "blank line" else b""),
        ]
    )
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(entry_fields, min_size=1, max_size=40),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=1, max_value=400),
    st.sampled_from([16 * 1024 * 1024, 17, 33]),
)
def test_entries_taken_in_runs_make_the_batches_messages_make(
    fields: list[list[bytes]], run: int, max_rows: int, max_bytes: int, max_record: int
) -> None:
    """Runs of whole-line entries (cut at ``RUN`` entries, here a few) give the batches,
    bytes and row counts that the same entries give one message at a time; with a small
    ``max_record_bytes``, the same poison too (a record of 40 bytes over 17 or 33, an
    entry of 8-byte lines over them)."""
    assembler = Assembler("JSONEachRow", max_record_bytes=max_record)
    limits = BatchLimits(max_rows=max_rows, max_bytes=max_bytes)
    entries = [[b"1-%d" % i, f] for i, f in enumerate(fields)]
    messages = [redisentries.message(e, b"data") for e in entries]
    default, assembly.RUN = assembly.RUN, run
    try:
        raw = framed(assembler, entries, limits)
    finally:
        assembly.RUN = default
    assert raw == one_by_one(assembler, messages, limits)
    if max_record > 1000:
        assert all(not poison for *_, poison in raw)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=40),
    st.booleans(),
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=1, max_value=400),
)
def test_a_run_of_entries_without_their_last_newline_makes_the_batches_messages_make(
    lines: list[int], ended: bool, max_rows: int, max_bytes: int
) -> None:
    """Entries none of which ends in a newline (one record each, or lines joined without
    the last newline) are one run too, a newline added after each, and fill batches
    (cut inside the run) as they do one at a time."""
    assembler = Assembler("JSONEachRow")
    limits = BatchLimits(max_rows=max_rows, max_bytes=max_bytes)
    entries = [
        [
            b"1-%d" % i,
            [b"data", b"".join(b'{"n":%d}\n' % j for j in range(n))[: None if ended else -1]],
        ]
        for i, n in enumerate(lines)
    ]
    assert isinstance(redisentries.pieces(assembler, entries, b"data")[0], redisentries.Run)
    messages = [redisentries.message(e, b"data") for e in entries]
    assert framed(assembler, entries, limits) == one_by_one(assembler, messages, limits)
